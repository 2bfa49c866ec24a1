"""A kept student in formats that load without netcomp: ONNX (checked with onnxruntime) and a torch.export
program, each loaded in a fresh process that imports only onnxruntime and numpy, or only torch."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from netcomp.export import ExportMismatch, export_student, real_images
from netcomp.surgery import load_student
from tests.conftest import TINY, cli

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

ONNX_ONLY = """
import sys
import numpy as np
import onnxruntime
session = onnxruntime.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
np.save(sys.argv[3], session.run(["logits"], {"images": np.load(sys.argv[2])})[0])
assert "torch" not in sys.modules and "netcomp" not in sys.modules
"""
TORCH_ONLY = """
import sys
import numpy as np
import torch
program = torch.export.load(sys.argv[1])
np.save(sys.argv[3], program.module()(torch.from_numpy(np.load(sys.argv[2]))).detach().numpy())
assert "netcomp" not in sys.modules and "onnxruntime" not in sys.modules
"""


def _run_alone(code: str, model: Path, images: np.ndarray, tmp_path: Path) -> np.ndarray:
    (tmp_path / "x.npy").write_bytes(b"")
    np.save(tmp_path / "x.npy", images)
    done = subprocess.run([sys.executable, "-I", "-c", code, str(model), str(tmp_path / "x.npy"),
                           str(tmp_path / "y.npy")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return np.load(tmp_path / "y.npy")


def test_a_runs_best_student_is_exported_and_loads_without_netcomp(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"run": {"fidelity": "smoke", "threads": 1, "dataset_kwargs": dict(TINY)}}))
    out = tmp_path / "run"
    assert cli("--env", "removal-resnet20-synthetic", "--agent", "random", "--budget", 2, "--config", config,
               "--out", out) == 0
    summary = json.loads((out / "summary.json").read_text())
    exported = summary["exported"]
    assert exported["onnx_max_abs_diff"] <= 1e-4 and exported["checked_images"] > 0
    assert Path(exported["onnx"]) == out / "best_student.onnx" and Path(exported["torch_export"]).exists()
    model, arch, meta = load_student(out / "best_student.pt")
    assert meta["index"] == exported["index"]
    images = torch.randn(5, arch.in_channels, arch.image_size, arch.image_size)  # another batch size too
    with torch.no_grad():
        want = model.eval()(images).numpy()
    assert np.abs(_run_alone(ONNX_ONLY, out / "best_student.onnx", images.numpy(), tmp_path) - want).max() <= 1e-4
    assert np.abs(_run_alone(TORCH_ONLY, out / "best_student.pt2", images.numpy(), tmp_path) - want).max() <= 1e-5
    assert cli("--resume", out) == 0  # finished: the exports are kept, nothing is redone


def test_an_export_that_does_not_match_is_refused_and_writes_nothing(tmp_path, monkeypatch):
    import netcomp.export
    from netcomp.data import load_dataset
    from netcomp.surgery import build_module
    from netcomp.zoo import build_arch

    data = load_dataset("synthetic", **TINY)
    arch = build_arch("lenet5", in_channels=data.channels, image_size=data.image_size,
                      num_classes=data.num_classes)
    monkeypatch.setattr(netcomp.export, "onnx_difference", lambda *a: 0.5)
    with pytest.raises(ExportMismatch, match="differs"):
        export_student(build_module(arch), real_images(data, 4), tmp_path)
    assert not (tmp_path / "best_student.onnx").exists() and not list(tmp_path.glob(".*.tmp"))
