"""Real-data check of the removal environment on Fashion-MNIST (CPU friendly, `fast` fidelity).

Trains (or loads from the cache) a ResNet-20 teacher on real Fashion-MNIST with the `fast` recipe, then
scores three students through the removal environment:
- removing nothing (the teacher's architecture),
- removing every other removable layer (about half of them),
- removing all removable layers of the last stage,
each twice: with inherited weights (``inherit="first_k"``, KD at Adam 1e-4: removing nothing keeps the
teacher, so it scores about the teacher's accuracy) and N2N style (re-initialised, then the fidelity's KD).
Prints accuracy, compression and reward for each. Usage: ``python -m benchmarks.removal_fashion [--arch A]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from envs.removal import RemovalEnv
from netcomp.evaluator import load_fidelity
from netcomp.surgery import blocks_of


def score(env: RemovalEnv, remove: list[str]) -> dict:
    action = np.array([0 if name in remove else 1 for name in env.layers], dtype=np.int8)
    env.reset(seed=0)
    start = time.perf_counter()
    _, reward, _, _, info = env.step(action)
    return {"removed": len(info["removed"]), "accuracy": info["accuracy"], "compression": info["compression"],
            "params": info["params"], "reward": reward, "valid": info["valid"],
            "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="resnet20")
    parser.add_argument("--fidelity", default="fast")
    args = parser.parse_args()
    start = time.perf_counter()
    base = load_fidelity(args.fidelity)
    # A student that starts from the teacher's weights needs gentle steps (Adam 1e-4); one that starts
    # from scratch takes the preset as it is.
    gentle = {"name": f"{base.name}-gentle", "teacher_recipe": base.teacher_recipe,
              "train": {**base.train.to_dict(), "lr": 1e-4}}
    envs = {mode: RemovalEnv(arch=args.arch, dataset="fashionmnist", fidelity=fid, require_smaller=False,
                             inherit=mode)
            for mode, fid in (("first_k", gentle), ("reinit", args.fidelity))}
    env = envs["first_k"]
    teacher = env.teacher.meta
    print(f"teacher {args.arch} on Fashion-MNIST ({teacher['recipe']} recipe): val acc {teacher['val_accuracy']:.4f} "
          f"(on the {env.fidelity.train.eval_max or 'all'} scoring images: {env.evaluator.teacher_accuracy:.4f}), "
          f"{teacher['params']:,} params; ready after {time.perf_counter() - start:.0f} s")
    removable = sorted(env.removable, key=list(env.layers).index)
    last = list(blocks_of(env.arch))[-1]
    last_stage = [n for n in removable if env.arch.node(n).stage == last]
    cases = {"remove nothing": [], "remove every other removable layer": removable[::2],
             "remove the last stage's removable layers": last_stage}
    print(f"\n{'case':<42} {'weights':<9} {'removed':>7} {'val acc':>8} {'compr.':>7} {'params':>9} "
          f"{'reward':>8} {'s':>6}")
    for mode, scored_env in envs.items():
        for name, remove in cases.items():
            r = score(scored_env, remove)
            print(f"{name:<42} {mode:<9} {r['removed']:>7} {r['accuracy']:>8.4f} {r['compression']:>7.3f} "
                  f"{r['params']:>9,} {r['reward']:>8.4f} {r['seconds']:>6.1f}")


if __name__ == "__main__":
    main()
