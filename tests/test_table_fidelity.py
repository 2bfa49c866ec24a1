"""benchmarks/table_fidelity.py: pairing a table's cheap and reference rows by student, and its figures."""

import numpy as np
import pytest

from benchmarks.table_fidelity import agreement, paired, top_overlap


def _row(key, acc, valid=True):
    return {"key": key, "valid": valid, "accuracy": acc, "reward": acc - 1.0}


def test_only_valid_students_in_both_tables_are_paired_once():
    cheap = [_row("a", 0.1), _row("b", 0.2), _row("c", 0.3, valid=False), _row(None, 0.9)]
    reference = [_row("b", 0.5), _row("a", 0.4), _row("b", 0.5), _row("c", 0.6), _row("d", 0.7)]
    assert [(c["key"], r["key"]) for c, r in paired(cheap, reference)] == [("b", "b"), ("a", "a")]


def test_top_overlap_counts_the_shared_best_by_hand():
    cheap = np.array([9, 8, 7, 1, 2, 3], float)
    reference = np.array([9, 1, 7, 8, 2, 3], float)
    assert top_overlap(cheap, reference, k=3) == 2  # {0, 1, 2} and {0, 3, 2}
    assert top_overlap(cheap, cheap, k=3) == 3


def test_agreement_is_perfect_for_the_same_order_and_reversed_for_the_opposite():
    pairs = [(_row(str(i), i / 20), _row(str(i), i / 10)) for i in range(20)]
    same = agreement(pairs, "accuracy")
    assert same["spearman"] == pytest.approx(1.0) and same["kendall"] == pytest.approx(1.0)
    assert same["top10_overlap"] == 10 and same["reference_rank_of_cheap_best"] == 1
    flipped = agreement([(c, _row(r["key"], -r["accuracy"])) for c, r in pairs], "accuracy")
    assert flipped["spearman"] == pytest.approx(-1.0) and flipped["top10_overlap"] == 0
    assert flipped["reference_rank_of_cheap_best"] == 20


def test_two_builds_of_a_table_are_compared_student_by_student():
    """benchmarks/table_diff.py: identical scores counted, moved ones measured, the optimum's move found."""
    from benchmarks.table_diff import diff
    from netcomp.tables import Table

    def table(rows, spec="t"):
        header = {"spec": spec, "fidelity": {"name": "rank", "key": "k"}}
        return Table(header, [{**r, "loss": r["accuracy"] / 2} for r in rows])

    old = [_row(str(i), i / 20) for i in range(12)] + [_row("gone", 0.3), _row("bad", 0.9, valid=False)]
    new = [_row(str(i), i / 20) for i in range(10)] + [_row("10", 0.3), _row("11", 0.4)]
    figures = diff(table(old), table(new))
    assert figures["students"] == 12 and figures["only_old"] == 1 and figures["only_new"] == 0
    assert figures["identical_accuracy"] == figures["identical_loss"] == figures["identical_reward"] == 10
    assert figures["accuracy_change_max"] == pytest.approx(0.5 - 0.3)
    assert not figures["same_optimum_student"] and figures["old_optimum_rank_in_new"] == 2  # "11" behind "9"
    with pytest.raises(SystemExit, match="not two builds"):
        diff(table(old), table(new, spec="other"))
