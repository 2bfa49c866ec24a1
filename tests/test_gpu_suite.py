"""benchmarks/gpu_suite.sh cannot rot: its CPU plumbing runs every step, and a dry run without gymnasium still
runs what does not need it (issue 29: the GPU suite must work the first time)."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "benchmarks" / "gpu_suite.sh"
IDX = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
SYSTEM = Path("/usr/share/datasets/fashion-mnist")
STEPS = ("preflight", "kd", "overhead", "fidelity", "ray", "table")


def _idx_gz(path: Path, arr: np.ndarray) -> None:
    """Write ``arr`` (uint8) as a gzipped IDX file."""
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.tobytes())


def _carried_data(folder: Path) -> Path:
    """A data root as the device gets it: only the four .gz files in FashionMNIST/raw/ (links to the real
    files where Debian's package is installed, else small made-up ones whose classes differ in brightness)."""
    raw = folder / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    if all((SYSTEM / f"{name}.gz").is_file() for name in IDX):
        for name in IDX:
            (raw / f"{name}.gz").symlink_to(SYSTEM / f"{name}.gz")
        return folder
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 5200), ("t10k", 200)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = np.clip(rng.normal(20.0 * labels[:, None, None], 30.0, (n, 28, 28)), 0, 255).astype(np.uint8)
        _idx_gz(raw / f"{prefix}-images-idx3-ubyte.gz", images)
        _idx_gz(raw / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return folder


def _suite(out: Path, **env: str) -> tuple[subprocess.CompletedProcess, dict]:
    """Run the suite with these settings; (the process, summary.json)."""
    full = {**os.environ, "OUT": str(out), "DEVICE": "cpu", "SMOKE": "1", **env}
    proc = subprocess.run(["bash", str(SUITE)], cwd=ROOT, env=full, capture_output=True, text=True, timeout=600)
    assert (out / "summary.json").is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads((out / "summary.json").read_text())


def test_cpu_plumbing_runs_every_step_with_a_log_and_figures(tmp_path: Path) -> None:
    data = _carried_data(tmp_path / "data")
    before = sorted(p.name for p in data.rglob("*"))
    out = tmp_path / "out"
    proc, summary = _suite(out, NETCOMP_DATA=str(data))
    text = proc.stdout
    assert "GPU wall-time estimate" in text and "machine start" in text
    steps = {s["step"]: s for s in summary["steps"]}
    assert tuple(steps) == STEPS
    have_ray = importlib.util.find_spec("ray") is not None
    for name, step in steps.items():
        if name == "ray" and not have_ray:
            assert step["status"] == "skipped" and "module:ray" in step["reason"]
            continue
        assert step["status"] == "ok", (name, step, text[-4000:])
        assert (out / "steps" / f"{name}.log").stat().st_size > 0
        assert step["figures"], name  # the step's JSON was written and read back
        assert step["headline"], name
    assert proc.returncode == 0, text[-3000:]
    assert (out / "suite.log").read_text().count("== ") >= len(STEPS)
    kd = steps["kd"]["figures"]
    assert "images/s vs engine" in (out / "steps" / "kd.log").read_text()
    assert kd["vs_engine"]["engine + teacher-logit cache"] == pytest.approx(
        1 / kd["speedup"]["engine + teacher-logit cache"])
    assert steps["preflight"]["figures"]["fashion_mnist"]["folder"] == str(data / "FashionMNIST" / "raw")
    # The carried folder is read in place: still the four .gz files and nothing else.
    assert sorted(p.name for p in data.rglob("*")) == before


def test_dry_run_without_gymnasium_reports_it_and_runs_the_rest(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc, summary = _suite(out, HIDE="gymnasium ray", PACK="1", STEPS="preflight overhead fidelity ray table")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "MISSING: python package gymnasium" in proc.stdout
    steps = {s["step"]: s for s in summary["steps"]}
    assert steps["preflight"]["status"] == "ok" and steps["overhead"]["status"] == "ok"
    assert not steps["preflight"]["figures"]["modules"]["gymnasium"]["ok"]
    for name in ("fidelity", "ray", "table"):
        assert steps[name]["status"] == "skipped" and "module:gymnasium" in steps[name]["reason"], steps[name]
    # Packed: what comes back from the device tool (8 files at most) holds every step's log and JSON.
    assert sorted(p.name for p in out.iterdir()) == ["steps.tar.gz", "suite.log", "summary.json"]
    with tarfile.open(out / "steps.tar.gz") as tar:
        names = {Path(n).name for n in tar.getnames()}
    assert {"preflight.log", "preflight.json", "overhead.log", "overhead.json", "fidelity.log"} <= names


def test_pool_scores_are_checked_exactly_on_cpu_and_within_a_tolerance_on_cuda() -> None:
    pytest.importorskip("ray")
    from benchmarks.ray_workers import _check

    reference = [("a", True, 0.5, 0.25), ("b", False, 0.0, -1.0)]
    assert _check([{"arch_key": k, "valid": v, "accuracy": a, "reward": r} for k, v, a, r in reference],
                  reference) == (0.0, 0.0)
    near = [{"arch_key": "a", "valid": True, "accuracy": 0.52, "reward": 0.26},
            {"arch_key": "b", "valid": False, "accuracy": 0.0, "reward": -1.0}]
    with pytest.raises(AssertionError, match="student 0"):
        _check(near, reference)
    acc, reward = _check(near, reference, tolerance=0.05)
    assert acc == pytest.approx(0.02) and reward == pytest.approx(0.01)
    with pytest.raises(AssertionError, match="tolerance 0.01"):
        _check(near, reference, tolerance=0.01)
    with pytest.raises(AssertionError, match="not this process's"):
        _check([{**near[0], "arch_key": "c"}, near[1]], reference, tolerance=0.05)


def test_kd_table_names_its_ratio_column_so_a_faster_row_reads_above_one(capsys: pytest.CaptureFixture) -> None:
    from benchmarks.kd_throughput import RATIO_COLUMN, Row, print_table

    engine = Row("engine (netcomp.distill)", "cpu", 256, 1, 1000, [10.0])
    cache = Row("engine + teacher-logit cache", "cpu", 256, 1, 1000, [10.0 / 1.2])
    plain = Row("plain DataLoader (workers=0)", "cpu", 256, 1, 1000, [25.0])
    print_table([engine, cache, plain], engine)
    lines = capsys.readouterr().out.splitlines()
    assert RATIO_COLUMN in lines[0] and "speedup" not in lines[0]
    assert lines[3].rstrip().endswith("1.20x") and lines[4].rstrip().endswith("0.40x")
