"""Wall time of ``run_agent.py --help`` and ``run_agent.py --list``, each in a fresh Python process.

What it measures: the seconds from starting ``python run_agent.py FLAG`` to its exit (interpreter start-up,
imports, printing), the median and the range of ``--repeats`` runs, plus whether the flag imported torch.
Why: issue 28 asks that a newcomer's first commands answer in under a second; importing torch alone takes
seconds, so neither flag may import it (``--list`` reads runner/catalog.py).

    python benchmarks/cli_speed.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Runs run_agent.main(FLAG) and says on stderr whether torch was imported on the way.
PROBE = ("import sys, run_agent\n"
         "try:\n    run_agent.main([sys.argv[1]])\nexcept SystemExit:\n    pass\n"
         "print('torch imported:', 'torch' in sys.modules, file=sys.stderr)\n")


def timed_run(flag: str) -> float:
    """Seconds one fresh ``python run_agent.py FLAG`` took; RuntimeError if it failed."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "run_agent.py", flag], cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"run_agent.py {flag} exited {done.returncode}: {done.stderr.strip()}")
    return seconds


def imports_torch(flag: str) -> bool:
    """Whether ``run_agent.main([FLAG])`` imports torch (in a fresh process)."""
    done = subprocess.run([sys.executable, "-c", PROBE, flag], cwd=ROOT, capture_output=True, text=True)
    return "torch imported: True" in done.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="fresh processes per flag (default 5)")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, "
          f"{args.repeats} runs per flag")
    for flag in ("--help", "--list"):
        times = [timed_run(flag) for _ in range(args.repeats)]
        print(f"run_agent.py {flag:<7} median {statistics.median(times):.3f} s (min {min(times):.3f}, max "
              f"{max(times):.3f}); imports torch: {imports_torch(flag)}")


if __name__ == "__main__":
    main()
