"""Two builds of one table, student by student: how far apart are their scores?

A table's scores are single seeded trainings, so two builds agree to the bit only where every number was
computed alike (same thread count, same CPU kernels: see netcomp/cpu_numerics.py). This script pairs two
builds of the same table by student and prints how many scores are identical, how far the others moved, whether
the two order the students alike (Spearman and Kendall of the rewards), and whether the optimum, the figure
regret is measured against, is the same student:

    git show OLD_COMMIT:teachers/tables/NAME.rank.jsonl.gz > /tmp/old.jsonl.gz
    python -m benchmarks.table_diff /tmp/old.jsonl.gz teachers/tables/NAME.rank.jsonl.gz
"""

from __future__ import annotations

import argparse

import numpy as np

from benchmarks.fidelity_rank import kendall, spearman
from benchmarks.table_fidelity import top_overlap
from netcomp.tables import Table, read_table


def valid_by_key(table: Table) -> dict[str, dict]:
    """The table's valid, trained rows by student key (actions that build the same student share one)."""
    return {r["key"]: r for r in table.rows if r.get("key") is not None and r["valid"]}


def diff(old: Table, new: Table) -> dict[str, object]:
    """The figures this script prints, as a dict (see the module docstring)."""
    if (old.name, old.header["fidelity"]["key"]) != (new.name, new.header["fidelity"]["key"]):
        raise SystemExit(f"not two builds of one table: {old.name} at {old.header['fidelity']['name']} against "
                         f"{new.name} at {new.header['fidelity']['name']}")
    a, b = valid_by_key(old), valid_by_key(new)
    keys = sorted(set(a) & set(b))
    ra, rb = (np.array([t[k]["reward"] for k in keys]) for t in (a, b))
    acc = np.array([abs(a[k]["accuracy"] - b[k]["accuracy"]) for k in keys])
    best_a, best_b = keys[int(np.argmax(ra))], keys[int(np.argmax(rb))]
    return {
        "students": len(keys), "only_old": len(set(a) - set(b)), "only_new": len(set(b) - set(a)),
        "identical_accuracy": int(np.sum(acc == 0)),
        "identical_loss": sum(a[k]["loss"] == b[k]["loss"] for k in keys),
        "identical_reward": int(np.sum(ra == rb)),
        "accuracy_change_median": float(np.median(acc)), "accuracy_change_max": float(acc.max()),
        "reward_change_median": float(np.median(np.abs(ra - rb))), "reward_change_max": float(np.abs(ra - rb).max()),
        "spearman": spearman(ra, rb), "kendall": kendall(ra, rb), "top10_overlap": top_overlap(ra, rb),
        "old_optimum": float(ra.max()), "new_optimum": float(rb.max()), "same_optimum_student": best_a == best_b,
        "old_optimum_rank_in_new": int(np.sum(rb > b[best_a]["reward"])) + 1,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", help="a table file (e.g. one taken from git history)")
    parser.add_argument("new", help="another build of the same table")
    args = parser.parse_args(argv)
    for name, value in diff(read_table(args.old), read_table(args.new)).items():
        print(f"{name:28s} {value:.6g}" if isinstance(value, float) else f"{name:28s} {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
