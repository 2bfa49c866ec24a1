"""One set of CPU kernels for every training, so a seeded result is the same float on any x86-64 CPU with AVX2.

Torch picks its CPU kernels by what the CPU offers: ATen's vectorised kernels (AVX-512, AVX2 or plain),
oneDNN's convolutions (its JIT emits the widest instruction set it finds), MKL's matrix products (one code
branch per CPU family) and NNPACK. A sum taken 16 lanes at a time rounds differently from one taken 8 at a
time, so the same seeded training on two CPUs of different instruction sets ends a few last bits apart, and a
table built on one does not re-score to the bit on the other (the thread count, fixed per run, is the other
cause: see :func:`netcomp.distill.torch_threads`).

The pin puts ATen and oneDNN on their AVX2 code, which every x86-64 server CPU since 2013 runs
(``ATEN_CPU_CAPABILITY=avx2``, ``ONEDNN_MAX_CPU_ISA=AVX2``), MKL on its ``COMPATIBLE`` branch of conditional
numerical reproducibility (``MKL_CBWR=COMPATIBLE``: its ``AVX2`` branch was measured to give other matrix
products on a CPU that says GenuineIntel than on one that says AuthenticAMD), and NNPACK off (it tiles by cache
size; oneDNN serves the convolutions it would). The libraries read the variables once, at their first CPU
kernel, so :func:`pin_cpu_numerics` runs when netcomp is imported, before the engine trains anything (worker
processes inherit them); the trainer turns NNPACK off. On an AVX2 CPU the pin costs nothing measurable (one
ResNet-20 `rank` training: 4.65 s with MKL's COMPATIBLE branch, 4.92 s unpinned; the convolutions run in
oneDNN); on an AVX-512 CPU, training is slower by what the wider vectors gained. Set
``NETCOMP_CPU_NUMERICS=native`` before importing netcomp to leave torch's own choice.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

#: The environment that pins torch's CPU kernels: ATen's and oneDNN's AVX2 code, MKL's vendor-neutral branch.
PIN = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "COMPATIBLE"}
#: Set to "native" to leave torch's kernel choice alone (fastest on AVX-512; not reproducible across CPUs).
OPT_OUT = "NETCOMP_CPU_NUMERICS"
#: Whether :func:`pin_cpu_numerics` pinned this process (it runs when netcomp is imported).
_REQUESTED = False


def cpu_has_avx2() -> bool:
    """Whether this CPU runs AVX2 and FMA code. Asked of /proc/cpuinfo on Linux, so that importing netcomp
    does not import torch (``run_agent.py --help`` stays fast); elsewhere of torch's cpuinfo."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        import torch

        has = getattr(torch.cpu, "_is_avx2_supported", None)
        return bool(has and has())
    flags = next((line.partition(":")[2].split() for line in text.splitlines() if line.startswith("flags")), [])
    return {"avx2", "fma"} <= set(flags)


def pin_cpu_numerics() -> bool:
    """Pin torch's CPU kernels (:data:`PIN`) in this process and its children: environment variables, read by
    the libraries at their first kernel; False where it may not or cannot (opted out, or no AVX2). A variable
    the user set to something else is respected (and :func:`cpu_numerics` then says it is not the pin)."""
    global _REQUESTED
    _REQUESTED = os.environ.get(OPT_OUT, "").lower() != "native" and cpu_has_avx2()
    if _REQUESTED:
        for name, value in PIN.items():
            os.environ.setdefault(name, value)
    return _REQUESTED


def apply_torch_flags() -> None:
    """The part of the pin that is a torch flag, not a variable: NNPACK off. The trainer (netcomp.distill)
    calls this when it is imported, so every training and evaluation runs with it."""
    if _REQUESTED:
        import torch.backends.nnpack

        torch.backends.nnpack.set_flags(False)


def cpu_numerics() -> dict[str, Any]:
    """What the CPU kernels of this process compute with: torch's ATen capability, the oneDNN and MKL
    settings, NNPACK, and whether that is the pin (a table records this; it re-scores only under the pin).
    Under the pin it first turns NNPACK off (:func:`apply_torch_flags`), so the report is what a training uses."""
    import torch

    apply_torch_flags()
    state = {"capability": torch.backends.cpu.get_cpu_capability(),
             **{name.lower(): os.environ.get(name) for name in PIN if name != "ATEN_CPU_CAPABILITY"},
             "nnpack": bool(torch._C._get_nnpack_enabled())}
    return {**state, "pinned": _matches_pin(state)}


def _matches_pin(state: dict[str, Any]) -> bool:
    """Whether ``state`` is the pin (on an AVX-512 CPU it is not when torch ran a CPU kernel before netcomp was
    imported, which fixed ATen's capability first; oneDNN's and MKL's choice cannot be read back)."""
    return (state["capability"] == "AVX2" and not state["nnpack"]
            and all(state[name.lower()] == value for name, value in PIN.items() if name != "ATEN_CPU_CAPABILITY"))
