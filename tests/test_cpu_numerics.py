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

#: Prints what a fresh process that imports netcomp computes with.
REPORT = "import json, netcomp; from netcomp.cpu_numerics import cpu_numerics; print(json.dumps(cpu_numerics()))"


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
    assert run_python(REPORT)["pinned"]
    native = run_python(REPORT, env={OPT_OUT: "native"})
    assert not native["pinned"] and native["onednn_max_cpu_isa"] is None and native["mkl_cbwr"] is None


@needs_avx2
def test_a_variable_the_user_set_is_respected_and_recorded_as_not_the_pin():
    state = run_python(REPORT, env={"ATEN_CPU_CAPABILITY": "default"})
    assert state["capability"] == "DEFAULT" and state["mkl_cbwr"] == "COMPATIBLE" and not state["pinned"]


QEMU = shutil.which("qemu-x86_64")


@pytest.mark.expensive
@needs_avx2
@pytest.mark.skipif(QEMU is None, reason="needs qemu-x86_64 (apt-get install qemu-user) to run other CPU models")
def test_a_seeded_training_is_the_same_float_on_an_intel_and_an_amd_cpu_model():
    """The same seeded training on two CPU models emulated by QEMU's user-mode emulator, an Intel Haswell and
    an AMD EPYC-Rome: each reports its own vendor, model, features and cache sizes to torch, oneDNN and MKL.
    Pinned, the two give the same floats to the bit; with MKL's AVX2 branch instead of its COMPATIBLE one
    they do not (so the comparison can fail). Two emulated CPUs are compared, not one against this host:
    on this tiny training the host and the emulator differ in the 8th digit even where the two emulated
    models agree (not traced; see docs/reference.md). About 4 minutes on 2 cores."""
    def on(model, **env):
        return run_python(TRAIN, env=env, prefix=(QEMU, "-cpu", model), timeout=900)

    intel, amd = on("Haswell"), on("EPYC-Rome")
    assert intel["numerics"]["pinned"] and amd["numerics"]["pinned"]
    assert {k: intel[k] for k in ("accuracy", "loss", "weights")} == {k: amd[k] for k in ("accuracy", "loss",
                                                                                          "weights")}
    assert on("Haswell", MKL_CBWR="AVX2")["weights"] != on("EPYC-Rome", MKL_CBWR="AVX2")["weights"]
