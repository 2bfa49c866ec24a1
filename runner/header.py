"""The header a run prints before its agent starts: its teacher's accuracy (loudly when weak) and how long the
run should take.

Why: a compression run is only as meaningful as its teacher, and a run of hours should say so before it
starts. The teacher's line gives its test and validation accuracy, where it came from (shipped, a file, the
recipe's cache) and the accuracy its recipe should reach; a teacher below it gets a WARNING that says what to do
(:func:`netcomp.teachers.weak_teacher_warning`), repeated at the end of the run and kept in ``summary.json``.

The expected duration comes from the CPU cost model of :func:`netcomp.distill.estimated_cpu_seconds` (fitted
on 2 CPU cores to the measured seconds per student of the `fast` and `rank` fidelities, and scaled by this
teacher's MACs, the fidelity's images and steps, and the run's thread count) times the evaluations left; for
a seconds budget it is the budget itself. On a tabulated space it is the lookups' time.
"""

from __future__ import annotations

from typing import Any

from agents.base import Budget
from netcomp.distill import CPU_MODEL_THREADS, estimated_cpu_seconds
from netcomp.teachers import format_duration, teacher_report

#: Seconds per step of a tabulated space (benchmarks/table_speed.py: 2,210 steps/s for LeNet-5).
TABLE_SECONDS_PER_LOOKUP = 0.0005


def run_header(config: dict[str, Any], env: Any, budget: Budget) -> tuple[list[str], dict[str, Any]]:
    """(lines to print, the teacher's report for ``summary.json``) of a built run: its teacher's line, any
    teacher warning, and its expected duration."""
    unwrapped = env.unwrapped
    evaluator = unwrapped.evaluator
    report = teacher_report(unwrapped.teacher, evaluator.dataset)
    lines = [teacher_line(report)]
    if report["warning"]:
        lines.append(f"WARNING: {report['warning']}")
    lines.append(duration_line(config, unwrapped, budget))
    return lines, report


def teacher_line(report: dict[str, Any]) -> str:
    """``teacher: ARCH on DATA, SOURCE (recipe R): test accuracy T, validation V; expects >= E``."""
    source = ("shipped " if report["shipped"] else "") + (report["path"] or "built in memory")
    test, val = report["test_accuracy"], report["val_accuracy"]
    figures = (f"test accuracy {_acc(test)}, validation {_acc(val)}"
               + (" (measured now: the file records none)" if report["measured_now"] else ""))
    expected = report["expected_test_accuracy"]
    verdict = (f"recipe {report['recipe']!r} should reach >= {expected:.4f}" if expected is not None else
               f"recipe {report['recipe']!r} declares no expected accuracy for {report['arch']} on "
               f"{report['dataset']} (configs/teachers.yaml): whether this teacher is well trained is not known")
    return f"teacher: {report['arch']} on {report['dataset']}, {source}: {figures}; {verdict}"


def _acc(value: float | None) -> str:
    return "not recorded" if value is None else f"{value:.4f}"


def duration_line(config: dict[str, Any], env: Any, budget: Budget) -> str:
    """``expected duration: ...`` of the run's budget left (see the module docstring)."""
    evaluator = env.evaluator
    left = None if budget.evaluations is None else max(0, budget.evaluations - budget.used)
    if getattr(env, "table", None) is not None:
        if left is None:
            return "expected duration: a tabulated space charges simulated seconds; its lookups take about 0.5 ms each"
        return (f"expected duration: about {format_duration(left * TABLE_SECONDS_PER_LOOKUP)} ({left} lookups of a "
                f"tabulated space at about 0.5 ms each, plus the env's start)")
    threads = int(config["run"].get("threads") or CPU_MODEL_THREADS)
    per, final = student_seconds(evaluator, threads)
    cost = (f"~{per:.1f} s per student at fidelity {evaluator.fidelity.name}, ~{format_duration(final)} for the "
            f"best student's final training; a CPU cost model fitted on {CPU_MODEL_THREADS} cores, at {threads} "
            f"thread{'s' if threads != 1 else ''} and this teacher's {evaluator.teacher_macs / 1e6:.1f} M MACs")
    seconds_left = None if budget.seconds is None else max(0.0, budget.seconds - budget.train_seconds)
    if seconds_left is not None and (left is None or left * per > seconds_left):
        return (f"expected duration: about {format_duration(seconds_left + final)}: the {seconds_left:.0f} training "
                f"seconds left of the seconds budget ({cost}); the agent's own work comes on top")
    where = "" if evaluator.device.type == "cpu" else (
        f" (on {evaluator.device.type} the CPU figure is an upper bound: no GPU figure was measured)")
    return (f"expected duration: about {format_duration(left * per + final)} for {left} evaluations{where} ({cost}); "
            f"it grows with the machine's load")


def student_seconds(evaluator: Any, threads: int) -> tuple[float, float]:
    """(seconds to score one student, seconds of the best student's final training) on this CPU at ``threads``
    threads, for a student as large as the teacher (the cost model's fit absorbs that students are smaller)."""
    fidelity, data = evaluator.fidelity, evaluator.dataset

    def cost(train: Any) -> float:
        return estimated_cpu_seconds(train, len(data.train), len(evaluator.scored), evaluator.teacher_macs, threads)

    return cost(fidelity.train), cost(fidelity.final_config())
