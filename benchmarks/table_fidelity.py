"""Proxy validity over a whole table: does the cheap fidelity order a table's students as the reference does?

A table is scored at a cheap fidelity (``rank``: 16 KD steps) for every student, and at the ``reference``
fidelity (10x the training, every validation image) for a random sample of its valid students
(``python -m netcomp build-table SPEC --fidelity reference --sample 500``). This script pairs the two files by
student and prints, over the students both hold:

- Spearman rho and Kendall tau of the validation accuracies (with 95% bootstrap intervals over students);
  accuracies, not rewards, are ranked: a reward adds the exact compression term, which would inflate them;
- the same for the rewards, which is what an agent sees;
- the top-10 overlap: of the 10 best students by the reference, how many are among the 10 best by the cheap
  fidelity (within the paired sample), and the reference rank of the cheap fidelity's best student.

    python -m benchmarks.table_fidelity channel-ratio-lenet5-fashionmnist
"""

from __future__ import annotations

import argparse

import numpy as np

from benchmarks.fidelity_rank import bootstrap, kendall, spearman
from netcomp.tables import read_table, resolve_spec, table_path


def paired(cheap_rows: list[dict], reference_rows: list[dict]) -> list[tuple[dict, dict]]:
    """(cheap, reference) rows of the valid students both tables scored, in the reference file's order."""
    cheap = {r["key"]: r for r in cheap_rows if r.get("key") is not None and r["valid"]}
    out, seen = [], set()
    for row in reference_rows:
        key = row.get("key")
        if key is not None and row["valid"] and key in cheap and key not in seen:
            seen.add(key)
            out.append((cheap[key], row))
    return out


def top_overlap(cheap: np.ndarray, reference: np.ndarray, k: int = 10) -> int:
    """How many of the ``k`` best by ``reference`` are among the ``k`` best by ``cheap`` (ties by position)."""
    best = lambda values: set(np.lexsort((np.arange(len(values)), -values))[:k].tolist())  # noqa: E731
    return len(best(cheap) & best(reference))


def agreement(pairs: list[tuple[dict, dict]], field: str) -> dict:
    """Spearman and Kendall (with intervals) and the top-10 overlap of one field over the paired students."""
    a = np.array([c[field] for c, _ in pairs], np.float64)
    b = np.array([r[field] for _, r in pairs], np.float64)
    order = np.argsort(-b, kind="stable")
    rank_of_cheap_best = int(np.where(order == int(np.argmax(a)))[0][0]) + 1
    return {"spearman": spearman(a, b), "spearman_ci": bootstrap(a, b, spearman), "kendall": kendall(a, b),
            "kendall_ci": bootstrap(a, b, kendall), "top10_overlap": top_overlap(a, b),
            "reference_rank_of_cheap_best": rank_of_cheap_best}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", help="a table spec of configs/tables.yaml")
    parser.add_argument("--cheap", default=None, help="the cheap fidelity (default: the spec's)")
    parser.add_argument("--reference", default="reference")
    args = parser.parse_args(argv)
    spec = resolve_spec(args.spec)
    cheap, reference = (read_table(table_path(spec, f)) for f in (args.cheap or spec.fidelity, args.reference))
    pairs = paired(cheap.rows, reference.rows)
    if len(pairs) < 3:
        raise SystemExit(f"only {len(pairs)} students are in both tables; build the reference sample first")
    print(f"{spec.name}: {len(pairs)} valid students scored at {cheap.header['fidelity']['name']} and "
          f"{reference.header['fidelity']['name']} (of {cheap.stats()['distinct_valid_students']} valid)")
    for field in ("accuracy", "reward"):
        r = agreement(pairs, field)
        print(f"  {field:8s}  Spearman {r['spearman']:+.3f} [{r['spearman_ci'][0]:+.3f}, {r['spearman_ci'][1]:+.3f}]"
              f"  Kendall {r['kendall']:+.3f} [{r['kendall_ci'][0]:+.3f}, {r['kendall_ci'][1]:+.3f}]"
              f"  top-10 overlap {r['top10_overlap']}/10  the cheap best is #{r['reference_rank_of_cheap_best']}"
              f" by the reference")


if __name__ == "__main__":
    main()
