"""The CPU pin: importing netcomp puts torch's CPU kernels on their AVX2 code, so a seeded training gives the
same floats on any AVX2 CPU (checked for real on other CPU models under QEMU, an `expensive` test)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from netcomp.cpu_numerics import OPT_OUT, PIN, cpu_has_avx2, cpu_numerics

ROOT = Path(__file__).resolve().parent.parent
needs_avx2 = pytest.mark.skipif(not cpu_has_avx2(), reason="this CPU has no AVX2: the pin cannot apply")

#: A seeded 2-epoch training of LeNet-5 on tiny synthetic data, with labels only (no teacher to train first);
#: prints the numerics and the trained floats, exactly (repr), as JSON.
TRAIN = """
import json, sys
import netcomp, torch
from netcomp.cpu_numerics import cpu_numerics
from netcomp.data import load_dataset
from netcomp.distill import TrainConfig, train_model
from netcomp.surgery import build_module
from netcomp.zoo import build_arch
torch.set_num_threads(1)
data = load_dataset("synthetic", image_size=16, train_size=256, val_size=64, test_size=64)
torch.manual_seed(0)
model = build_module(build_arch("lenet5", data.channels, data.image_size, data.num_classes))
config = TrainConfig(loss="ce", epochs=2, batch_size=32, lr=0.05)
result = train_model(model, data, config, seed=3)
weights = sum(float(p.detach().double().sum()) for p in model.parameters())
print(json.dumps({"numerics": cpu_numerics(), "accuracy": repr(result.accuracy), "loss": repr(result.loss),
                  "weights": repr(weights)}))
"""


def run_python(code: str, env: dict[str, str] | None = None, prefix: tuple[str, ...] = (),
               timeout: float = 120) -> dict:
    """Run ``code`` in a fresh interpreter (optionally under ``prefix``, e.g. an emulator); its JSON line."""
    env = {**{k: v for k, v in os.environ.items() if k not in (*PIN, OPT_OUT)}, "PYTHONPATH": str(ROOT),
           **(env or {})}
    out = subprocess.run([*prefix, sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=timeout, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@needs_avx2
def test_importing_netcomp_pins_the_cpu_kernels_of_this_process():
    """The test process imported netcomp before any kernel ran (conftest), so it computes under the pin."""
    state = cpu_numerics()
    assert state == {"capability": "AVX2", "onednn_max_cpu_isa": "AVX2", "mkl_cbwr": "COMPATIBLE", "nnpack": False,
                     "pinned": True}
    assert torch.backends.cpu.get_cpu_capability() == "AVX2" and not torch._C._get_nnpack_enabled()


@needs_avx2
def test_a_fresh_process_is_pinned_and_the_opt_out_leaves_torch_alone():
    code = "import json, netcomp; from netcomp.cpu_numerics import cpu_numerics; print(json.dumps(cpu_numerics()))"
    assert run_python(code)["pinned"]
    native = run_python(code, env={OPT_OUT: "native"})
    assert not native["pinned"] and native["onednn_max_cpu_isa"] is None and native["mkl_cbwr"] is None


@needs_avx2
def test_a_variable_the_user_set_is_respected_and_recorded_as_not_the_pin():
    code = "import json, netcomp; from netcomp.cpu_numerics import cpu_numerics; print(json.dumps(cpu_numerics()))"
    state = run_python(code, env={"ATEN_CPU_CAPABILITY": "default"})
    assert state["capability"] == "DEFAULT" and state["mkl_cbwr"] == "COMPATIBLE" and not state["pinned"]


QEMU = shutil.which("qemu-x86_64")


@pytest.mark.expensive
@needs_avx2
@pytest.mark.skipif(QEMU is None, reason="needs qemu-x86_64 (apt-get install qemu-user) to run other CPU models")
@pytest.mark.parametrize("model", ["Haswell", "EPYC-Rome"])
def test_a_seeded_training_is_the_same_float_on_other_cpu_models(model):
    """The same seeded training, here and on an emulated CPU of another vendor or cache layout (QEMU's
    user-mode emulator reports that model's CPUID to torch, oneDNN and MKL): the same floats, to the bit.
    About 2-3 minutes each on 2 cores (the emulator is 50-100x slower)."""
    here = run_python(TRAIN)
    plain = run_python(TRAIN, env={"ATEN_CPU_CAPABILITY": "default"})  # another kernel set moves the floats:
    assert plain["weights"] != here["weights"]  # so the comparison below can fail
    there = run_python(TRAIN, prefix=(QEMU, "-cpu", model), timeout=900)
    assert here["numerics"]["pinned"] and there["numerics"]["pinned"]
    assert {k: there[k] for k in ("accuracy", "loss", "weights")} == {k: here[k] for k in ("accuracy", "loss",
                                                                                          "weights")}
