"""Helpers of ``benchmarks/gpu_suite.sh``: the preflight check and the closing summary.

``preflight`` says, before any figure is measured, what the suite's steps need and what this machine lacks:
Python packages (the steps' own imported, not only found: one that is there but fails to import counts as
missing; the others, which no step needs, only looked up, to keep the check short),
the Fashion-MNIST files, the shipped teachers, ``/dev/shm`` (DataLoader workers and Ray's object store), free
disk, and the GPU. It prints one line per check (``MISSING`` where something lacks), writes every value as
JSON and writes the capabilities it found, one per line (``module:gymnasium``, ``data:fashionmnist``,
``device:cuda``, ``shm``, ``tables``), for the suite to choose its steps from. It never fails the suite: a
check that breaks is reported as missing.

``summary`` reads the suite's step records (one JSON line per step, written by the shell) and each step's
figures (the JSON its benchmark wrote), writes them together as one ``summary.json`` and prints a short table
with the headline figure of each step.

    python benchmarks/suite_tools.py preflight --device cuda --json OUT/preflight.json --have OUT/have.txt
    python benchmarks/suite_tools.py summary --steps WORK/steps.jsonl --json OUT/summary.json
"""

from __future__ import annotations

import argparse
import gzip
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
#: The four gzipped IDX files of (Fashion-)MNIST, in torchvision's names.
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")
#: Where Debian's dataset-fashion-mnist installs them (netcomp.data.FASHION_MNIST_SYSTEM_DIR).
SYSTEM_FASHION_DIR = "/usr/share/datasets/fashion-mnist"
#: Modules the suite's steps import (the step that needs it in brackets), then ones no step needs but a user
#: of the project does (named in the report so a machine's gaps are known before a run on it).
STEP_MODULES = {"torch": "every step", "torchvision": "kd", "numpy": "every step", "scipy": "fidelity",
                "yaml": "fidelity, ray, table", "tqdm": "every step", "PIL": "kd",
                "gymnasium": "fidelity, ray, table", "farama_notifications": "gymnasium", "ray": "ray"}
OTHER_MODULES = ("stable_baselines3", "optuna", "cmaes", "gpytorch", "matplotlib", "tensorboard")
#: Below this much free space in /dev/shm, the suite runs DataLoader workers as 0 (they pass batches there).
SHM_MIN_BYTES = 256 * 2**20


def _find(name: str) -> tuple[bool, str]:
    """(whether ``name`` is installed, its distribution's version), without importing it."""
    try:
        if importlib.util.find_spec(name) is None:
            return False, f"No module named {name!r}"
    except (ImportError, ValueError) as exc:
        return False, f"{type(exc).__name__}: {exc}"
    try:
        return True, importlib.metadata.version(name.replace("_", "-"))
    except importlib.metadata.PackageNotFoundError:
        return True, "present"


def _import(name: str) -> tuple[bool, str]:
    """(whether ``name`` imports, its version or the error)."""
    try:
        module = importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - any failure to import is "missing", with its reason
        return False, f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
    return True, str(getattr(module, "__version__", "present"))


def _fashion_mnist(data_root: str) -> dict[str, Any]:
    """Where the netcomp loader will find Fashion-MNIST under ``data_root`` (or the Debian folder)."""
    raw = Path(data_root).expanduser() / "FashionMNIST" / "raw"
    found: dict[str, Any] = {"root": str(Path(data_root).expanduser()), "found": False}
    for folder, suffix in ((raw, ""), (raw, ".gz"), (Path(SYSTEM_FASHION_DIR), ".gz")):
        files = [folder / (name + suffix) for name in IDX_FILES]
        if all(f.is_file() for f in files):
            found.update(found=True, folder=str(folder), gz=bool(suffix),
                         megabytes=round(sum(f.stat().st_size for f in files) / 2**20, 1))
            break
    if found["found"] and found["gz"]:
        try:  # the labels' header: magic 2049 and the number of items, read without unpacking anything
            with gzip.open(Path(found["folder"]) / "train-labels-idx1-ubyte.gz", "rb") as f:
                head = f.read(8)
            found["train_labels"] = int.from_bytes(head[4:8], "big")
            found["readable"] = int.from_bytes(head[:4], "big") == 2049
        except OSError as exc:
            found["readable"], found["error"] = False, str(exc)
    extra = sorted(p.name for p in raw.iterdir() if not p.name.endswith(".gz")) if raw.is_dir() else []
    found["unpacked_beside"] = extra  # anything but the four .gz files makes a carried folder bigger
    return found


def _shm() -> dict[str, Any]:
    """Whether /dev/shm exists and is writable, and its free bytes."""
    path = Path("/dev/shm")
    if not path.is_dir():
        return {"exists": False, "writable": False, "free_bytes": 0}
    try:
        with tempfile.NamedTemporaryFile(dir=path):
            writable = True
    except OSError:
        writable = False
    stat = os.statvfs(path)
    return {"exists": True, "writable": writable, "free_bytes": stat.f_bavail * stat.f_frsize}


def _gpu(device: str) -> dict[str, Any]:
    """What torch and nvidia-smi say about the GPU."""
    info: dict[str, Any] = {"asked": device}
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            info["nvidia_smi"] = subprocess.run(
                [smi, "--query-gpu=name,memory.total,memory.used,driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            info["nvidia_smi"] = f"failed: {exc}"
    try:
        import torch

        info["torch"] = str(torch.__version__)
        info["cuda_build"] = torch.version.cuda
        info["cuda_available"] = bool(torch.cuda.is_available())
        if info["cuda_available"]:
            free, total = torch.cuda.mem_get_info(0)
            info.update(name=torch.cuda.get_device_name(0), count=torch.cuda.device_count(),
                        capability=".".join(map(str, torch.cuda.get_device_capability(0))),
                        memory_gib=round(total / 2**30, 1), free_gib=round(free / 2**30, 1))
    except Exception as exc:  # noqa: BLE001 - a broken torch or driver is reported, not raised
        info["cuda_available"], info["error"] = False, f"{type(exc).__name__}: {exc}"
    return info


def preflight(device: str, data_root: str, out_dir: str) -> dict[str, Any]:
    """Every check, as plain data, with ``missing`` (what lacks, in words) and ``have`` (capabilities)."""
    start = time.perf_counter()
    report: dict[str, Any] = {"python": sys.version.split()[0], "executable": sys.executable,
                              "platform": platform.platform(), "cpu_count": os.cpu_count(), "modules": {}}
    missing: list[str] = []
    have: list[str] = []
    for name, needed_by in STEP_MODULES.items():
        ok, detail = _import(name)
        report["modules"][name] = {"ok": ok, "detail": detail, "needed_by": needed_by}
        if ok:
            have.append(f"module:{name}")
        else:
            missing.append(f"python package {name} (needed by {needed_by}): {detail}")
    for name in OTHER_MODULES:
        ok, detail = _find(name)
        report["modules"][name] = {"ok": ok, "detail": detail, "needed_by": "no step of the suite"}
        if ok:
            have.append(f"module:{name}")
        else:
            missing.append(f"python package {name} (no step needs it; the project's users do): {detail}")
    gpu = _gpu(device)
    report["gpu"] = gpu
    if gpu.get("cuda_available"):
        have.append("device:cuda")
    elif device.startswith("cuda"):
        missing.append(f"a CUDA GPU (DEVICE={device}; torch.cuda.is_available() is False"
                       f"{'; ' + gpu['error'] if 'error' in gpu else ''}): DEVICE=cpu SMOKE=1 runs the plumbing")
    data = _fashion_mnist(data_root)
    report["fashion_mnist"] = data
    if data["found"] and data.get("readable", True):
        have.append("data:fashionmnist")
    else:
        missing.append(f"Fashion-MNIST: the four .gz files in {data['root']}/FashionMNIST/raw/ or "
                       f"{SYSTEM_FASHION_DIR} (needed by fidelity, table)")
    teachers = {name: (ROOT / "teachers" / name).is_file()
                for name in ("resnet20-fashionmnist.pt", "lenet5-fashionmnist.pt")}
    report["shipped_teachers"] = teachers
    if teachers["resnet20-fashionmnist.pt"]:
        have.append("teacher:resnet20-fashionmnist")
    else:
        missing.append("the shipped teacher teachers/resnet20-fashionmnist.pt (without it fidelity and table "
                       "train a teacher first, which the time budget does not cover)")
    shm = _shm()
    report["shm"] = shm
    if shm["writable"] and shm["free_bytes"] >= SHM_MIN_BYTES:
        have.append("shm")
    else:
        missing.append(f"/dev/shm (exists {shm['exists']}, writable {shm['writable']}, "
                       f"{shm['free_bytes'] / 2**20:.0f} MiB free): DataLoader workers set to 0, Ray may be slow")
    tables = all((ROOT / p).is_file() for p in ("netcomp/tables.py", "envs/build_table.py", "configs/tables.yaml"))
    report["tables"] = tables
    if tables:
        have.append("tables")
    else:
        missing.append("the tabular benchmarks (netcomp/tables.py, envs/build_table.py): no table step")
    disk = shutil.disk_usage(out_dir if os.path.isdir(out_dir) else ".")
    report["disk_free_gib"] = round(disk.free / 2**30, 1)
    report["missing"], report["have"] = missing, have
    report["seconds"] = time.perf_counter() - start
    return report


def print_preflight(report: dict[str, Any]) -> None:
    """One line per check; MISSING lines last."""
    gpu = report["gpu"]
    print(f"python {report['python']} ({report['executable']}), {report['cpu_count']} CPU cores, "
          f"{report['disk_free_gib']} GiB free disk")
    if gpu.get("cuda_available"):
        print(f"GPU: {gpu['name']} x{gpu['count']}, capability {gpu['capability']}, {gpu['memory_gib']} GiB "
              f"({gpu['free_gib']} free); torch {gpu['torch']} (CUDA {gpu['cuda_build']})")
    else:
        print(f"GPU: none usable (torch {gpu.get('torch', '?')}, CUDA build {gpu.get('cuda_build')})")
    if gpu.get("nvidia_smi"):
        print(f"nvidia-smi: {gpu['nvidia_smi']}")
    mods = report["modules"]
    print("packages: " + ", ".join(f"{n} {m['detail'] if m['ok'] else 'MISSING'}" for n, m in mods.items()))
    data = report["fashion_mnist"]
    if data["found"]:
        print(f"Fashion-MNIST: {data['folder']} ({'gz' if data['gz'] else 'unpacked'}, {data['megabytes']} MB"
              f"{', ' + str(data.get('train_labels')) + ' training labels' if data['gz'] else ''})")
    if data["unpacked_beside"]:
        print(f"note: {data['root']}/FashionMNIST/raw holds more than the .gz files: {data['unpacked_beside']}")
    shm = report["shm"]
    print(f"/dev/shm: {'writable' if shm['writable'] else 'NOT writable'}, {shm['free_bytes'] / 2**30:.1f} GiB free")
    for line in report["missing"]:
        print(f"MISSING: {line}")
    print(f"have: {' '.join(report['have'])}")


# ---------------------------------------------------------------------------------------------- summary
def _headline(step: str, figures: dict[str, Any]) -> str:
    """The one figure worth reading first, per step (empty if the step's JSON is not the expected shape)."""
    try:
        if step == "preflight":
            gpu = figures["gpu"]
            return (f"{gpu.get('name', 'no GPU')}; {len(figures['missing'])} missing: "
                    + "; ".join(m.split(":")[0].split(" (")[0] for m in figures["missing"]))
        if step == "kd":
            rows = {r["pipeline"]: r for r in figures["rows"]}
            engine = figures["rows"][0]
            plain = [r for r in figures["rows"] if r["pipeline"].startswith("plain")]
            text = f"{figures['device']}: engine {engine['epoch_seconds_50k']:.1f} s/epoch"
            if plain:
                text += (f", plain {plain[0]['epoch_seconds_50k']:.1f} s/epoch "
                         f"(engine {figures['speedup'][plain[0]['pipeline']]:.2f}x faster)")
            cache = [r for r in rows if "cache" in r]
            if cache:
                text += f", teacher-logit cache {figures['vs_engine'][cache[0]]:.2f}x the engine's images/s"
            return text
        if step == "overhead":
            ms = figures["milliseconds"]
            return (f"{figures['arch']} on {figures['device']}: build {ms['build on device']:.1f} ms + inherit "
                    f"indices {ms['inherit indices']:.1f} ms per student")
        if step == "fidelity":
            parts = [f"{name}: seed rho {r['seed_spearman']:+.2f}, ref rho {r['ref_spearman']:+.2f}, "
                     f"{r['seconds']:.2f} s" for name, r in figures["fidelities"].items()]
            return (f"reference {figures['reference']['name']} {figures['reference']['seconds']:.1f} s/student; "
                    + "; ".join(parts))
        if step == "ray":
            return "; ".join(f"{p['workers']} worker(s) {p['seconds']:.2f} s, efficiency {p['efficiency']:.2f}, "
                             f"max |d acc| {p['max_accuracy_diff']:.4f}" for p in figures["pools"])
        if step == "table":
            stats = figures["stats"]
            return (f"{figures['spec']} at {figures['fidelity']}: {stats['actions']} actions of {stats['grid']}, "
                    f"{stats['training_seconds']:.0f} s of training")
    except (KeyError, TypeError, IndexError, ValueError, ZeroDivisionError):
        return ""
    return ""


def summary(steps_file: Path, out: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Merge the step records and their figures into ``out``; print the table; return the merged data."""
    steps: list[dict[str, Any]] = []
    if steps_file.is_file():
        for line in steps_file.read_text().splitlines():
            if line.strip():
                try:
                    steps.append(json.loads(line))
                except json.JSONDecodeError:
                    steps.append({"step": "?", "status": "unreadable record", "record": line})
    for step in steps:
        path = steps_file.parent / (step.get("json") or "")  # file names are relative to the steps' folder
        step["figures"] = None
        if step.get("json") and path.is_file():
            try:
                step["figures"] = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                step["figures_error"] = str(exc)
        step["headline"] = _headline(step["step"], step["figures"]) if step["figures"] else ""
    merged = {**meta, "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "steps": steps}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(merged, indent=1, default=str))
    os.replace(tmp, out)
    print(f"{'step':<10} {'status':<9} {'seconds':>8}  figures / reason")
    for s in steps:
        detail = s["headline"] or s.get("reason", "")
        print(f"{s['step']:<10} {s['status']:<9} {float(s.get('seconds', 0)):>8.0f}  {detail}")
    return merged


def main(argv: list[str] | None = None) -> int:
    """The command line: ``preflight`` or ``summary``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    pre = sub.add_parser("preflight", help="what the suite's steps need, and what lacks")
    pre.add_argument("--device", default="cuda")
    pre.add_argument("--data-root", default=os.environ.get("NETCOMP_DATA") or "~/.cache/netcomp/data")
    pre.add_argument("--json", type=Path, required=True)
    pre.add_argument("--have", type=Path, required=True, help="capabilities, one per line")
    summ = sub.add_parser("summary", help="merge the step records and figures into one JSON")
    summ.add_argument("--steps", type=Path, required=True, help="the suite's step records (JSON lines)")
    summ.add_argument("--json", type=Path, required=True)
    summ.add_argument("--meta", default="{}", help="a JSON object written at the top of the summary")
    args = p.parse_args(argv)
    if args.command == "preflight":
        report = preflight(args.device, args.data_root, str(args.json.parent))
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
        args.have.write_text("".join(f"{h}\n" for h in report["have"]))
        print_preflight(report)
        return 0
    summary(args.steps, args.json, json.loads(args.meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
