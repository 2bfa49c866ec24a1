"""A comparison: several agents x seeds on one env at one budget, and its leaderboard and plots.

``python run_agent.py --env ENV --agent n2n,random,... --seeds 3 --budget B`` runs every (agent, seed) as an
ordinary run directory inside one comparison directory, with the same env, teacher, fidelity, data and
budget for all (an agent's own config file may not change them), then writes:

- ``compare.yaml``: what the comparison is (written before anything trains, so ``--resume DIR`` continues it);
- ``leaderboard.md`` / ``leaderboard.csv``: per agent, mean and std over seeds of the best reward, its
  accuracy, compression and MACs, the evaluations and training seconds taken to reach 95% of the final best,
  all the training seconds spent (students' and a white-box agent's own search), and the test accuracy of
  the best student after the fidelity's shared final training (the same for every agent); sorted by mean
  best reward;
- ``best_so_far.png`` (best reward against evaluations and against training seconds, a min-max band over
  seeds per agent) and ``pareto.png`` (accuracy against params and MACs, every agent's students, the teacher
  marked). Each run keeps its TensorBoard events (``<run>/tb``): ``tensorboard --logdir DIR`` shows them all.

Agents whose spaces or modes do not fit the env are refused before anything trains, each with the reason.
A killed comparison resumes with ``--resume DIR``: finished runs are not re-run and an unfinished one
resumes from its own records, so no evaluation is repeated.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from agents.base import Budget
from netcomp.files import remove_stale_temporaries, write_text_atomic
from netcomp.pareto import front_hypervolume
from runner.recorder import RunLog, best, full_fidelity, read_records
from runner.rundir import (
    CLI_ONLY,
    RUN_DEFAULTS,
    AgentOverspent,
    ConfigError,
    agent_source,
    agent_yaml,
    check_config,
    check_keys,
    check_out,
    check_resumed_agent,
    check_run_settings,
    locked,
    prepare,
    read_user_config,
    read_yaml_file,
    resolve_config,
    start,
    torch_threads_now,
    user_input,
)

COMPARE_FILE = "compare.yaml"
#: Run settings every run of a comparison shares (the flags set them; agents' config files cannot).
SHARED_KEYS = ("budget", "budget_seconds", "fidelity", "device", "data_root", "download", "teacher", "workers",
               "ray_address", "threads", "export", "teacher_model")
#: compare.yaml's keys.
SPEC_KEYS = ("env", "agents", "seeds", "preset", "run", "agent_sources", "agent_configs")
#: Flags a comparison's resume cannot take: they would change what it computes (or be ignored).
FIXED_ON_RESUME = ("env", "seeds", "budget", "budget_seconds", "fidelity", "preset", "teacher", "config", "mode",
                   "agent_config",
                   "load_policy", "seed", "threads", "trust_pickle", "top", "tolerance")
#: "Reached 95% of its final best": the first evaluation whose best so far is within 5% of |final best|.
REACH_FRACTION = 0.95


# ---------------------------------------------------------------------------- the command
def compare_command(args: argparse.Namespace) -> int:
    """Run (or resume) a comparison and print its leaderboard; 0 when every run finished."""
    with user_input():
        if args.resume:
            out = Path(args.resume)
            spec = _resume_spec(out, args)
        else:
            spec = comparison_spec(args)
            stamp = time.strftime("%Y%m%d-%H%M%S")
            out = Path(args.out or f"runs/compare-{spec['env']}-{stamp}")
            check_out(out)
            if (out / COMPARE_FILE).exists():
                raise ConfigError(f"{out} already holds a comparison; use --resume {out} or another --out")
        configs = run_configs(spec)  # every agent checked before anything trains
    with locked(out):
        remove_stale_temporaries(out)
        if not (out / COMPARE_FILE).exists():
            saved = {**spec, "run": {**spec["run"], **{k: RUN_DEFAULTS[k] for k in CLI_ONLY if k in spec["run"]}}}
            write_text_atomic(out / COMPARE_FILE, yaml.safe_dump(saved, sort_keys=False))
        mixed = [p for (agent, seed), config in configs.items()
                 if (p := config_mismatch(out / run_label(agent, seed), config))]
        if mixed:
            raise ConfigError(f"{out} mixes runs of different settings, so its leaderboard would compare unlike "
                              f"runs: {' | '.join(mixed)}; move those run directories aside or start a new comparison")
        for i, ((agent, seed), config) in enumerate(configs.items(), 1):
            run_dir = out / run_label(agent, seed)
            print(f"\n[{i}/{len(configs)}] {agent} seed {seed} -> {run_dir}", flush=True)
            try:
                _run_one(config, run_dir)
            except AgentOverspent as exc:  # that run ended with its summary; the others still run
                print(f"warning: {run_dir.name}: {exc}", flush=True)
            _say_best(run_dir)
        rows = write_leaderboard(out, spec)
    print(f"\nLeaderboard ({len(spec['agents'])} agents x {len(spec['seeds'])} seeds, {out}):")
    print(markdown_table(rows))
    print("\nEach agent's best student (highest search reward over its seeds) after the shared final training:")
    for line in best_students(out, spec):
        print(line)
    return 0


def best_students(out: Path, spec: dict[str, Any]) -> list[str]:
    """One line per agent: its best-reward run's student after the shared final training, against the teacher
    (test accuracy on the same images, parameters)."""
    lines = []
    for agent in spec["agents"]:
        finals, searched = [], False
        for seed in spec["seeds"]:
            summary_path = out / run_label(agent, seed) / "summary.json"
            summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
            final = summary.get("shared_final") or {}
            searched = searched or bool((summary.get("best") or {}).get("valid"))
            if final.get("valid"):
                finals.append((final["reward"], seed, final))
        if not finals:
            lines.append(f"  {agent}: " + ("valid students found, but none had the final training (a comparison on "
                                            "a table skips it)" if searched else "no valid student"))
            continue
        reward, seed, f = max(finals, key=lambda t: t[0])
        lines.append(f"  {agent} (seed {seed}, reward {reward:.4f}): test accuracy {f['test_accuracy']:.4f} "
                     f"(teacher {f['teacher_test_accuracy']:.4f} on the same {f['test_images']:,} images), "
                     f"{f['params']:,} params ({f['teacher_params'] / f['params']:.1f}x smaller than the "
                     f"teacher's {f['teacher_params']:,})")
    return lines


def comparison_spec(args: argparse.Namespace) -> dict[str, Any]:
    """What the flags ask for: env, agents, seeds, preset and the shared run settings."""
    if not args.env or not args.agent:
        raise ConfigError("a comparison needs --env and --agent a,b,...")
    if args.load_policy or args.mode:
        raise ConfigError("--load-policy and --mode apply to one run, not a comparison; each agent runs with its "
                          "own configs/<agent>.yaml (and --preset where it has one)")
    agents = [a.strip() for a in args.agent.split(",") if a.strip()]
    if not agents:
        raise ConfigError(f"--agent {args.agent!r} names no agent")
    if len(set(agents)) != len(agents):
        raise ConfigError(f"--agent lists an agent twice: {args.agent}")
    seeds = args.seeds if args.seeds is not None else 1
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    first = args.seed or 0
    run = {key: RUN_DEFAULTS[key] for key in SHARED_KEYS}
    run.update(_shared_config(args.config))
    for key in SHARED_KEYS:
        value = getattr(args, key, None)
        if value not in (None, False):
            run[key] = value
    if args.budget is None and args.budget_seconds is not None:
        run["budget"] = None
    if getattr(args, "image_size", None) is not None:
        run["dataset_kwargs"] = {**(run.get("dataset_kwargs") or {}), "image_size": args.image_size}
    if run.get("threads") is None:  # one thread count for every run, recorded (numerics depend on it on CPU)
        run["threads"] = torch_threads_now()
    sources = {agent_name(a): agent_source(agent_name(a)) for a in agents if ":" in a}
    return {"env": args.env, "agents": agents, "seeds": list(range(first, first + seeds)), "preset": args.preset,
            "run": run, "agent_sources": sources,
            "agent_configs": read_agent_configs(getattr(args, "agent_config", None), agents)}


def _shared_config(path: str | None) -> dict[str, Any]:
    """A comparison's --config: only ``run:`` settings, shared by every run (data, env options, fidelity)."""
    user = read_user_config(path)
    if set(user) - {"run"}:
        raise ConfigError(f"--config {path} of a comparison may only hold `run:` settings shared by every agent "
                          f"(agents keep their own configs/<agent>.yaml); found {sorted(user)}")
    run = user.get("run") or {}
    personal = sorted(set(run) - set(SHARED_KEYS) - {"dataset_kwargs", "env_kwargs"})
    if personal:
        raise ConfigError(f"--config {path}: {personal} cannot be shared by a comparison's runs")
    return run


def read_spec(out: Path) -> dict[str, Any]:
    """compare.yaml, its shape checked: ConfigError naming what is wrong (a hand-edited or damaged file)."""
    where = out / COMPARE_FILE
    spec = read_yaml_file(where, "the comparison file")
    check_keys(spec, SPEC_KEYS, str(where))
    agents, seeds = spec.get("agents"), spec.get("seeds")
    if not isinstance(spec.get("env"), str):
        raise ConfigError(f"{where}: env {spec.get('env')!r} is not an env name")
    if not (isinstance(agents, list) and agents and all(isinstance(a, str) and a for a in agents)) \
            or len(set(agents)) != len(agents):
        raise ConfigError(f"{where}: agents {agents!r} is not a list of distinct agent names")
    if not (isinstance(seeds, list) and seeds and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0
                                                      for x in seeds)) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"{where}: seeds {seeds!r} is not a list of distinct integers >= 0")
    configs = spec.get("agent_configs") or {}
    if not isinstance(configs, dict) or set(configs) - set(agents) or not all(isinstance(v, dict)
                                                                              for v in configs.values()):
        raise ConfigError(f"{where}: agent_configs is not a mapping of the comparison's agents to settings")
    if spec.get("preset") is not None and not isinstance(spec["preset"], str):
        raise ConfigError(f"{where}: preset {spec['preset']!r} is not a preset name")
    run = spec.get("run")
    check_keys(run, (*SHARED_KEYS, "env_kwargs", "dataset_kwargs"), f"{where} run:")
    check_run_settings(run, f"{where} run:")
    for key in ("budget", "budget_seconds", "fidelity"):
        if key not in run:
            raise ConfigError(f"{where} run: has no {key}")
    return spec


def _resume_spec(out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The saved spec of a comparison; flags that would change it are refused. Where it runs (device, Ray
    workers and address) and trust come from the command line only; a comparison of a user's agent resumes
    only when --agent names the same agents again (compare.yaml never chooses code to import)."""
    spec = read_spec(out)
    for flag in FIXED_ON_RESUME:
        if getattr(args, flag, None) is not None and getattr(args, flag) is not False:
            raise ConfigError(f"--{flag.replace('_', '-')} cannot change the comparison in {out}; it is fixed by "
                              f"{out / COMPARE_FILE}")
    if args.out and Path(args.out).resolve() != out.resolve():
        raise ConfigError(f"--out {args.out} with --resume {out}: a resumed comparison stays in its directory")
    users = [agent_name(a) for a in spec["agents"] if ":" in a]
    given = [a.strip() for a in (args.agent or "").split(",") if a.strip()]
    if args.agent is not None and given != spec["agents"]:
        raise ConfigError(f"--agent {args.agent} differs from the comparison's agents {','.join(spec['agents'])}")
    if users and not given:
        raise ConfigError(f"{out} compares your agent(s) {', '.join(users)}: resume with --agent "
                          f"{','.join(spec['agents'])} (a comparison file never chooses code to run)")
    for key in CLI_ONLY:
        if key in spec["run"]:
            spec["run"][key] = RUN_DEFAULTS[key]
    for key in ("device", "workers", "ray_address", "data_root", "teacher_model"):  # where it runs may change
        if getattr(args, key, None) is not None:
            spec["run"][key] = getattr(args, key)
    spec["run"]["download"] = bool(getattr(args, "download", False))
    if not isinstance(spec.get("agent_sources") or {}, dict):
        raise ConfigError(f"{out / COMPARE_FILE}: agent_sources is not a mapping")
    for agent in users:
        check_resumed_agent({"agent": agent, "agent_source": (spec.get("agent_sources") or {}).get(agent)}, agent,
                            out)
    return spec


#: A run's settings that must equal its comparison's (besides env, agent and seed).
MATCHED = (*SHARED_KEYS, "env_kwargs", "dataset_kwargs")


def config_mismatch(run_dir: Path, expected: dict) -> str | None:
    """How a run directory's saved config differs from what its comparison would run (None: it matches, or
    the run has not started). Where it runs (device, workers) may differ."""
    path = run_dir / "config.yaml"
    if not path.exists():
        return None
    saved = read_yaml_file(path, "the run's config") or {}
    check_config(saved, str(path))
    diffs = [f"{key} {saved.get(key)!r} (expected {expected.get(key)!r})" for key in ("env", "agent", "preset")
             if saved.get(key) != expected.get(key) and not (key == "env" and _same_env_id(saved, expected))]
    run, want = saved.get("run") or {}, expected["run"]
    diffs += [f"{key} {run.get(key)!r} (expected {want.get(key)!r})" for key in (*MATCHED, "seed")
              if key not in (*CLI_ONLY, "device") and run.get(key) != want.get(key)]
    diffs += [f"{key} differs" for key in ("agent_config", "agent_source")
              if key in saved and json.dumps(saved.get(key), sort_keys=True, default=str)
              != json.dumps(expected.get(key), sort_keys=True, default=str)]
    return f"{run_dir.name}: " + ", ".join(diffs) if diffs else None


def _same_env_id(a: dict, b: dict) -> bool:
    import envs

    try:
        return envs.parse_env_id(str(a.get("env"))) == envs.parse_env_id(str(b.get("env")))
    except ValueError:
        return False


def agent_name(label: str) -> str:
    """The agent a comparison's label names: ``random@wide`` is ``random`` under the label ``random@wide`` (one
    agent may run twice with different ``--agent-config`` settings)."""
    name, at, tag = label.rpartition("@")
    return name if at and tag and ":" not in tag and "/" not in tag else label


def read_agent_configs(pairs: list[str] | None, labels: list[str]) -> dict[str, dict]:
    """``--agent-config LABEL=FILE`` (repeatable): each file is a YAML mapping of that agent's settings (its
    Config fields), data only; ConfigError for an unknown label, a bad pair or a file that is not a mapping."""
    out: dict[str, dict] = {}
    for pair in pairs or []:
        label, eq, path = pair.partition("=")
        if not eq or not label or not path:
            raise ConfigError(f"--agent-config {pair!r} is not LABEL=FILE")
        if label not in labels:
            raise ConfigError(f"--agent-config {pair!r}: {label!r} is not one of --agent {','.join(labels)}")
        data = read_yaml_file(path, "--agent-config") or {}
        if isinstance(data, dict) and set(data) == {"agent_config"}:
            data = data["agent_config"] or {}
        if not isinstance(data, dict):
            raise ConfigError(f"--agent-config {path} is not a mapping of the agent's settings")
        if "study_storage" in data:
            raise ConfigError(f"--agent-config {path}: study_storage can only be given on the command line")
        out[label] = data
    return out


def run_label(agent: str, seed: int) -> str:
    """A run's directory name: the agent (a user's FILE.py:Class by its class) and the seed."""
    return f"{agent.rpartition(':')[2]}-s{seed}"


def run_configs(spec: dict[str, Any]) -> dict[tuple[str, int], dict]:
    """The resolved config of every (agent, seed), each checked against the env and budget.

    Every agent that cannot run (space, mode, budget units, config) is named in one ConfigError, before
    anything trains.
    """
    configs, problems, bases = {}, [], {}
    for agent in spec["agents"]:
        try:
            name = agent_name(agent)
            preset = spec["preset"] if spec["preset"] and _has_preset(name, spec["preset"]) else None
            bases[agent] = resolve_config(argparse.Namespace(env=spec["env"], agent=name, config=None, preset=preset,
                                                             download=False))
            bases[agent]["preset"] = preset
            own = (spec.get("agent_configs") or {}).get(agent) or {}
            bases[agent]["agent_config"] = {**bases[agent]["agent_config"], **own}
        except (ValueError, FileNotFoundError) as exc:
            problems.append(f"{agent}: {exc}")
    shared = {"--config": {"run": {k: spec["run"].get(k) or {} for k in ("env_kwargs", "dataset_kwargs")}}}
    env_settings = shared_env_settings({**shared, **bases})
    for agent, base in bases.items():
        try:
            for seed in spec["seeds"]:
                config = json.loads(json.dumps(base))  # a deep copy of plain data
                on_table = config["run"].get("fidelity") == "table" or spec["run"].get("fidelity") == "table"
                config["run"].update(spec["run"], **env_settings, seed=seed, save_best=not on_table,
                                     shared_final=not on_table)  # a table's point is thousands of cheap episodes
                budget = Budget(config["run"]["budget"], config["run"]["budget_seconds"])
                prepare(config, RunLog(budget))
                configs[(agent, seed)] = config
        except (ValueError, FileNotFoundError) as exc:
            problems.append(f"{agent}: {exc}")
    if problems:
        raise ConfigError(f"cannot compare on {spec['env']}: " + " | ".join(problems))
    return configs


def shared_env_settings(bases: dict[str, dict]) -> dict[str, dict]:
    """The env settings every run gets: the union of the agents' own ``env_kwargs`` / ``dataset_kwargs``
    (TAS's space options, say), so every agent acts on the same env. Two agents asking for different values
    of one setting cannot be compared on one env: ConfigError naming both."""
    merged: dict[str, dict] = {"env_kwargs": {}, "dataset_kwargs": {}}
    owner: dict[tuple[str, str], str] = {}
    for agent, config in bases.items():
        for section in merged:
            for key, value in (config["run"].get(section) or {}).items():
                if key in merged[section] and merged[section][key] != value:
                    raise ConfigError(f"{owner[section, key]} runs with {section} {key}={merged[section][key]!r} "
                                      f"but {agent} with {key}={value!r}: they act on different envs")
                merged[section][key], owner[section, key] = value, agent
    return merged


def _has_preset(agent: str, preset: str) -> bool:
    try:
        agent_yaml(agent, preset)
    except ConfigError:
        return False
    return True


def _run_one(config: dict, run_dir: Path) -> None:
    """Start the run, or resume it (a finished run says so and is not re-run)."""
    flags = dict(env=None, agent=None, budget=None, budget_seconds=None, fidelity=None, mode=None, preset=None,
                 config=None, out=None, resume=None, teacher=None, load_policy=None, trust_pickle=False,
                 device=None, seed=None, data_root=None, download=False, workers=None, ray_address=None)
    if (run_dir / "config.yaml").exists():
        where = {key: config["run"].get(key) for key in ("device", "workers", "ray_address", "data_root",
                                                         "download", "teacher_model")}  # may change
        agent = config["agent"] if ":" in config["agent"] else None  # checked against the command line already
        start(argparse.Namespace(**{**flags, **where, "agent": agent, "resume": str(run_dir)}))
    else:
        start(argparse.Namespace(**{**flags, "out": str(run_dir)}), config=config)


def _say_best(run_dir: Path) -> None:
    records = read_records(run_dir / "evaluations.jsonl")
    if records:
        top = best(records)
        print(f"{run_dir.name}: best reward {top['reward']:.4f} (evaluation {top['index']}) "
              f"of {len(records)}", flush=True)


# ---------------------------------------------------------------------------- the numbers
@dataclass
class RunResult:
    """One finished run's figures for the leaderboard."""

    agent: str
    seed: int
    evaluations: int
    best_reward: float
    accuracy: float | None
    compression: float | None
    macs: int | None
    evals_to_reach: int
    seconds_to_reach: float
    final_test: float | None
    #: all the training seconds the run spent: its students' and a white-box agent's own (charged) search
    train_seconds: float | None = None
    #: False when the run's accounting did not add up (students trained outside the recorder, an edited budget)
    comparable: bool = True
    #: the hypervolume of the run's accuracy/MACs front (reference: accuracy 0 at the teacher's MACs, MACs as a
    #: fraction of the teacher's), from every agent's records, so every agent gets one
    hypervolume: float | None = None
    #: on a tabular benchmark: the table's best reward minus the run's best (0: the optimum was found)
    regret: float | None = None


def reach_threshold(best: float) -> float:
    """95% of the final best: ``0.95 * best`` for a positive best, and as far below a negative one."""
    return best - (1.0 - REACH_FRACTION) * abs(best)


def best_so_far(records: list[dict]) -> tuple[list[float], list[float]]:
    """(best reward so far, training seconds so far) after each evaluation; a cache hit trains nothing. A lower
    rung's evaluation (ASHA) spends its seconds but its reward, from a shorter KD run, is not a candidate."""
    best, seconds, top, spent = [], [], -math.inf, 0.0
    for r in records:
        top = max(top, float(r["reward"])) if full_fidelity(r) else top
        spent += 0.0 if r.get("cached") else float(r.get("eval_seconds") or 0.0)
        best.append(top)
        seconds.append(spent)
    return best, seconds


def run_result(agent: str, seed: int, run_dir: Path) -> RunResult | None:
    """The figures of one run from its records and summary (None if it recorded nothing)."""
    records = read_records(run_dir / "evaluations.jsonl")
    if not records:
        return None
    top = best(records)  # the first of equal rewards
    curve, seconds = best_so_far(records)
    if top is None:  # only lower rungs recorded (a multi-fidelity run stopped early): nothing to rank
        return None
    threshold = reach_threshold(curve[-1])
    reached = next(i for i, value in enumerate(curve) if value >= threshold)
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
    final = summary.get("shared_final") or {}
    spent = (float(summary.get("eval_seconds") or 0.0) + float(summary.get("charged_seconds") or 0.0)
             if summary else None)
    return RunResult(agent, seed, len(records), float(top["reward"]), top.get("accuracy"),
                     top.get("compression"), top.get("macs"), reached + 1, seconds[reached],
                     final.get("test_accuracy") if final.get("valid") else None, spent,
                     comparable=bool(summary.get("comparable", True)) and not summary.get("overspent"),
                     hypervolume=front_hypervolume([r for r in records if full_fidelity(r)], "macs"),
                     regret=None if summary.get("table_optimum") is None
                     else float(summary["table_optimum"]) - float(top["reward"]))


#: Leaderboard columns: (name, RunResult field, format).
COLUMNS = (("best reward", "best_reward", "{:.4f}"), ("val acc", "accuracy", "{:.4f}"),
           ("compression", "compression", "{:.3f}"), ("MACs", "macs", "{:,.0f}"),
           ("evals to 95%", "evals_to_reach", "{:.1f}"), ("train s to 95%", "seconds_to_reach", "{:.1f}"),
           ("total train s", "train_seconds", "{:.0f}"), ("final test acc", "final_test", "{:.4f}"),
           ("hypervolume", "hypervolume", "{:.4f}"), ("regret", "regret", "{:.4f}"))


def mean_std(values: list[float | None]) -> tuple[float | None, float | None, int]:
    """(mean, sample std with ddof 1 (0 for one value), count) of the values that are there."""
    have = [float(v) for v in values if v is not None]
    if not have:
        return None, None, 0
    std = float(np.std(have, ddof=1)) if len(have) > 1 else 0.0
    return float(np.mean(have)), std, len(have)


def leaderboard(results: list[RunResult]) -> list[dict[str, Any]]:
    """One row per agent: its seeds' count and mean/std of every column, sorted by mean best reward."""
    rows = []
    for agent in dict.fromkeys(r.agent for r in results):
        mine = [r for r in results if r.agent == agent]
        row: dict[str, Any] = {"agent": agent, "seeds": len(mine), "evaluations": sum(r.evaluations for r in mine),
                               "not_comparable": sum(not r.comparable for r in mine)}
        for _, field_name, _ in COLUMNS:
            mean, std, count = mean_std([getattr(r, field_name) for r in mine])
            row[f"{field_name}_mean"], row[f"{field_name}_std"], row[f"{field_name}_n"] = mean, std, count
        rows.append(row)
    return sorted(rows, key=lambda r: -r["best_reward_mean"])


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The leaderboard as a Markdown table: mean ± std over seeds (n, when fewer seeds have the value)."""
    head = ["agent", "seeds", *(name for name, _, _ in COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        bad = row.get("not_comparable")
        flag = f" (NOT COMPARABLE: {bad} run(s), see summary.json)" if bad else ""
        cells = [row["agent"] + flag, str(row["seeds"])]
        for _, field_name, fmt in COLUMNS:
            mean, std, n = row[f"{field_name}_mean"], row[f"{field_name}_std"], row[f"{field_name}_n"]
            cell = "-" if mean is None else f"{fmt.format(mean)} ± {fmt.format(std)}"
            cells.append(cell + (f" (n={n})" if mean is not None and n != row["seeds"] else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def csv_text(rows: list[dict[str, Any]]) -> str:
    """The leaderboard as CSV: agent, seeds, evaluations, then mean, std and n of every column."""
    buffer = io.StringIO()
    fields = ["agent", "seeds", "evaluations", "not_comparable"] + [f"{f}_{s}" for _, f, _ in COLUMNS
                                                                   for s in ("mean", "std", "n")]
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_leaderboard(out: Path, spec: dict[str, Any]) -> list[dict[str, Any]]:
    """leaderboard.md, leaderboard.csv and the two plots of a comparison directory (atomically)."""
    results = [r for agent in spec["agents"] for seed in spec["seeds"]
               if (r := run_result(agent, seed, out / run_label(agent, seed))) is not None]
    rows = leaderboard(results)
    header = (f"# Leaderboard: {spec['env']}\n\n{len(spec['agents'])} agents x seeds {spec['seeds']}, budget "
              f"{spec['run']['budget']} evaluations"
              + (f" / {spec['run']['budget_seconds']} training seconds" if spec["run"]["budget_seconds"] else "")
              + f", fidelity {spec['run']['fidelity']}. Mean ± std over seeds; 95%: the first evaluation whose best "
              f"so far is within 5% of the run's final best; final test acc: the best student after the "
              f"fidelity's shared final training; hypervolume: the area of the run's (validation accuracy, MACs "
              f"as a fraction of the teacher's) front above accuracy 0 and below the teacher's MACs.\n\n")
    header += teacher_note(out, spec)
    write_text_atomic(out / "leaderboard.md", header + markdown_table(rows) + "\n")
    write_text_atomic(out / "leaderboard.csv", csv_text(rows))
    write_comparison_plots(out, spec)
    return rows


def teacher_note(out: Path, spec: dict[str, Any]) -> str:
    """The leaderboard's teacher paragraph: its test and validation accuracy and recipe from the runs'
    summary.json (one line when every run had the same teacher, else one per teacher naming its runs), and any
    weak-teacher WARNING; empty when no run recorded its teacher."""
    teachers: dict[str, tuple[dict, list[str]]] = {}
    for agent in spec["agents"]:
        for seed in spec["seeds"]:
            path = out / run_label(agent, seed) / "summary.json"
            teacher = json.loads(path.read_text()).get("teacher") if path.exists() else None
            if teacher:
                key = json.dumps({k: teacher.get(k) for k in ("path", "recipe", "test_accuracy", "val_accuracy")},
                                 sort_keys=True)
                teachers.setdefault(key, (teacher, []))[1].append(run_label(agent, seed))
    lines = []
    for teacher, runs in teachers.values():
        which = "" if len(teachers) == 1 else f" (runs {', '.join(runs)})"
        lines.append(f"Teacher{which}: {teacher['arch']} on {teacher['dataset']}, recipe {teacher['recipe']}, "
                     f"{teacher['path'] or 'built in memory'}: test accuracy {_fmt_acc(teacher['test_accuracy'])}, "
                     f"validation accuracy {_fmt_acc(teacher['val_accuracy'])}.")
        if teacher.get("warning"):
            lines.append(f"**WARNING: {teacher['warning']}**")
    return "\n\n".join(lines) + "\n\n" if lines else ""


def _fmt_acc(value: float | None) -> str:
    return "not recorded" if value is None else f"{value:.4f}"


# ---------------------------------------------------------------------------- the plots
def write_comparison_plots(out: Path, spec: dict[str, Any]) -> None:
    """best_so_far.png, pareto.png and, on a table, regret.png of a comparison directory (runner/plots.py)."""
    from runner.plots import write_comparison_plots as write

    write(out, spec)
