"""One instruction set for every CPU training, so a seeded result is the same float on any x86-64 CPU with AVX2.

Torch picks its CPU kernels by what the CPU offers: ATen's vectorised kernels (AVX-512, AVX2 or plain),
oneDNN's convolutions (its JIT emits the widest instruction set it finds), MKL's matrix products (one code
branch per CPU family) and NNPACK. A sum taken 16 lanes at a time rounds differently from one taken 8 at a
time, so the same seeded training on an AVX-512 Xeon and on an AVX2 EPYC ends a few last bits apart, and a
table built on one does not re-score to the bit on the other (the thread count, pinned too, is the other
cause: see :func:`netcomp.distill.torch_threads`).

The pin puts every library on its AVX2 code, which every x86-64 server CPU since 2013 runs:
``ATEN_CPU_CAPABILITY=avx2``, ``ONEDNN_MAX_CPU_ISA=AVX2``, ``MKL_CBWR=AVX2`` (MKL's conditional numerical
reproducibility), and NNPACK off (it never runs where oneDNN does, and it tiles by cache size). The libraries
read these once, at their first CPU kernel, so :func:`pin_cpu_numerics` runs when netcomp is imported, before
the engine trains anything; worker processes inherit the environment. On an AVX2 CPU the pin costs nothing
(it is what torch picks there); on an AVX-512 one, a ResNet-20 training is slower by what the wider vectors
gained. Set ``NETCOMP_CPU_NUMERICS=native`` before importing netcomp to leave torch's own choice.
"""

from __future__ import annotations

import os
from typing import Any

#: The environment that pins torch's CPU kernel libraries to their AVX2 code.
PIN = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"}
#: Set to "native" to leave torch's kernel choice alone (fastest on AVX-512; not reproducible across CPUs).
OPT_OUT = "NETCOMP_CPU_NUMERICS"


def cpu_has_avx2() -> bool:
    """Whether this CPU runs AVX2 and FMA code (asked of the CPU itself, without starting torch's kernels)."""
    import torch

    has = getattr(torch.cpu, "_is_avx2_supported", None)
    return bool(has and has())


def pin_cpu_numerics() -> bool:
    """Pin torch's CPU kernels to AVX2 in this process and its children; False where it cannot or may not
    (opted out, no AVX2, or the user set one of the variables to something else, which is respected)."""
    if os.environ.get(OPT_OUT, "").lower() == "native" or not cpu_has_avx2():
        return False
    for name, value in PIN.items():
        os.environ.setdefault(name, value)
    import torch.backends.nnpack

    torch.backends.nnpack.set_flags(False)
    return is_pinned()


def cpu_numerics() -> dict[str, Any]:
    """What the CPU kernels of this process compute with: torch's ATen capability, the oneDNN and MKL
    settings, NNPACK, and whether that is the pin (a table records this; it re-scores only under the pin)."""
    import torch

    state = {"capability": torch.backends.cpu.get_cpu_capability(),
             **{name.lower(): os.environ.get(name) for name in PIN if name != "ATEN_CPU_CAPABILITY"},
             "nnpack": bool(torch._C._get_nnpack_enabled())}
    return {**state, "pinned": _matches_pin(state)}


def is_pinned() -> bool:
    """Whether this process computes under the pin (False too when torch ran a CPU kernel before netcomp was
    imported, fixing its capability first)."""
    return cpu_numerics()["pinned"]


def _matches_pin(state: dict[str, Any]) -> bool:
    return (state["capability"] == "AVX2" and not state["nnpack"]
            and all(state[name.lower()] == value for name, value in PIN.items() if name != "ATEN_CPU_CAPABILITY"))
