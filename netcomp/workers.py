"""Evaluations on many devices: a pool of Ray actors that train students for an :class:`Evaluator`.

An attached pool replaces the trainer behind :meth:`Evaluator._train` and nothing else: the evaluator still
checks students, looks up and writes its cache, and the run still counts its budget, so results, cache and
budget are those of one process. Each actor holds the teacher and the dataset on its own device (a GPU, a
fraction of one so that several small students share it, or the CPU) and trains one student per task; a
student trained alone gives exactly the result it gets in a batch, so spreading a batch changes nothing.

Faults: an actor that dies (killed, out of memory) is restarted by Ray, which retries its task
(``max_restarts`` / ``max_task_retries``); if it stays dead, the pool starts a fresh actor in its slot and
re-queues the student, up to :data:`MAX_ATTEMPTS` times. Every finished student is handed back at once
(``on_result``), so the evaluator appends it to cache.jsonl before the batch ends and a killed driver
resumes with it as a cache hit.

Ray is imported by this module only, and the run machinery imports it only for ``--workers``: a run without
workers never imports Ray.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
import torch
from ray.exceptions import RayActorError

from netcomp.arch import Arch, arch_from_dict, arch_to_dict
from netcomp.cpu_numerics import OPT_OUT, PIN, cpu_numerics

if TYPE_CHECKING:
    from netcomp.evaluator import EvalResult, Evaluator

#: How many times one student is re-queued after the actor training it died for good.
MAX_ATTEMPTS = 3
#: Ray's own restarts of a dead actor, each retrying the task it was running.
ACTOR_RESTARTS = 2
#: The repository root: actors import netcomp from here (every node of a cluster needs the same checkout).
ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------- the actor
class EvalWorker:
    """One actor: the teachers and datasets it was sent, on its own device, one Evaluator per spec.

    Specs arrive as object references wrapped in a list (so Ray does not resolve them on every call) and
    are read once per actor; training uses one torch thread (actors share the machine's cores).
    """

    def __init__(self, threads: int = 1) -> None:
        torch.set_num_threads(threads)
        self.device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
        self.evaluators: dict[str, Evaluator] = {}

    def train(self, spec_id: str, spec_ref: list, student: dict, inherit: str, seed: int) -> dict:
        """Train one student (plain data from :func:`arch_to_dict`); its EvalResult as JSON."""
        if spec_id not in self.evaluators:
            self.evaluators[spec_id] = _evaluator_from_spec(ray.get(spec_ref[0]), self.device)
        return self.evaluators[spec_id]._train([arch_from_dict(student)], inherit, seed)[0].to_json()

    def threads(self) -> int:
        """The torch thread count the actor trains with (the run's)."""
        return torch.get_num_threads()

    def numerics(self) -> dict[str, Any]:
        """What the actor's CPU kernels compute with (see :mod:`netcomp.cpu_numerics`)."""
        return cpu_numerics()

    def pid(self) -> int:
        """The actor's process id (tests kill it; a restarted actor has a new one)."""
        return os.getpid()


def _numerics_env() -> dict[str, str]:
    """The driver's CPU-kernel settings, for the workers it starts (they then compute the same floats)."""
    return {name: os.environ[name] for name in (*PIN, OPT_OUT) if name in os.environ}


def _evaluator_spec(evaluator: Evaluator) -> dict[str, Any]:
    """What rebuilds ``evaluator``'s trainer elsewhere: plain data and CPU tensors, no file paths needed."""
    teacher = evaluator.teacher
    state = {k: v.detach().cpu() for k, v in teacher.model.state_dict().items()}
    return {"teacher": {"arch": arch_to_dict(teacher.arch), "state_dict": state, "meta": teacher.meta},
            "dataset": evaluator.dataset.to("cpu"), "fidelity": evaluator.fidelity,
            "kwargs": {"seed": evaluator.seed, "inherit": evaluator.inherit, "split": evaluator.split,
                       "require_smaller": evaluator.require_smaller, "min_linear_inputs": evaluator.min_linear_inputs,
                       "size_metrics": evaluator.size_metrics, "inherit_bn_stats": evaluator.inherit_bn_stats}}


def _evaluator_from_spec(spec: dict[str, Any], device: str) -> Evaluator:
    """An in-process Evaluator (no cache file) equal to the driver's, on this actor's device."""
    from netcomp.evaluator import Evaluator
    from netcomp.surgery import build_module
    from netcomp.teachers import Teacher

    arch = arch_from_dict(spec["teacher"]["arch"])
    model = build_module(arch)
    model.load_state_dict(spec["teacher"]["state_dict"])
    teacher = Teacher(arch, model.eval(), dict(spec["teacher"]["meta"]))
    return Evaluator(teacher, spec["dataset"], spec["fidelity"], device=device, **spec["kwargs"])


# ---------------------------------------------------------------------------- the pool
class WorkerPool:
    """``workers`` Ray actors that train the students of every evaluator attached to it.

    ``address`` is a running cluster's (``HEAD:6379``, or "auto"); None starts a local one unless Ray is
    already initialised in this process. ``gpus`` is each actor's share of a GPU (1, or 0.25 to put four
    actors on one GPU); None gives each a whole GPU when the cluster has any, else makes CPU actors.
    """

    def __init__(self, workers: int, address: str | None = None, gpus: float | None = None,
                 threads: int = 1) -> None:
        if workers < 1:
            raise ValueError(f"--workers must be at least 1, got {workers}")
        self._owns_ray, self.actors = not ray.is_initialized(), []
        if self._owns_ray:
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": {"PYTHONPATH": _pythonpath(), **_numerics_env()}})
        try:
            self.gpus = _gpu_share(workers, gpus)
        except ValueError:
            self.shutdown()
            raise
        self.threads = int(threads)  # the run's torch thread count: an actor trains the same floats as the driver
        # one CPU of Ray's accounting per actor whatever its thread count: asking for ``threads`` CPUs would leave
        # actors unschedulable on a small cluster (the numbers depend on the torch threads, not on Ray's count)
        self._actor_cls = ray.remote(EvalWorker).options(
            num_cpus=1, num_gpus=self.gpus, max_restarts=ACTOR_RESTARTS, max_task_retries=ACTOR_RESTARTS)
        self.actors = [self._actor_cls.remote(self.threads) for _ in range(workers)]
        if not self.gpus:
            self._check_numerics()
        self._specs: dict[int, tuple[Evaluator, str, list]] = {}  # id(evaluator) -> (it, spec id, [ObjectRef])
        #: test hook: called with the pool and the in-flight {ObjectRef: (slot, index)} after each submission
        self.on_submit: Callable[[WorkerPool, dict], None] | None = None
        self.restarted = 0  # actors replaced after they died for good

    def _check_numerics(self) -> None:
        """CPU actors must compute as the driver does (a table records the driver's numerics for every row)."""
        here = cpu_numerics()
        for actor in self.actors:
            there = ray.get(actor.numerics.remote())
            if there != here:
                self.shutdown()
                raise RuntimeError(f"a Ray worker's CPU kernels differ from this process's: {there} against "
                                   f"{here} (set the same {', '.join(PIN)} and {OPT_OUT} on every node)")

    def attach(self, evaluator: Evaluator) -> None:
        """Send ``evaluator``'s teacher and dataset to the cluster once; its trainings go to this pool."""
        if id(evaluator) not in self._specs:  # the evaluator is kept, so its id is never reused meanwhile
            self._specs[id(evaluator)] = (evaluator, f"spec{len(self._specs)}", [ray.put(_evaluator_spec(evaluator))])
        evaluator.pool = self

    def train(self, evaluator: Evaluator, students: Sequence[Arch], inherit: str, seed: int,
              on_result: Callable[[int, EvalResult], None] | None = None) -> list[EvalResult]:
        """Train ``students`` on the actors, one task each; results in the students' order.

        ``on_result(i, result)`` is called as each one finishes (in finishing order).
        """
        from netcomp.evaluator import EvalResult

        self.attach(evaluator)
        _, spec_id, spec_ref = self._specs[id(evaluator)]
        plain = [arch_to_dict(s) for s in students]
        queue, attempts = deque(range(len(students))), [0] * len(students)
        results: list[EvalResult | None] = [None] * len(students)
        running: dict[Any, tuple[int, int]] = {}  # in flight: ObjectRef -> (actor slot, student index)
        while queue or running:
            for slot in self._idle(running):  # one task per actor: a death re-queues one student only
                if not queue:
                    break
                i = queue.popleft()
                running[self.actors[slot].train.remote(spec_id, spec_ref, plain[i], inherit, seed)] = (slot, i)
            if self.on_submit is not None:
                self.on_submit(self, running)
            done, _ = ray.wait(list(running), num_returns=1)
            slot, i = running.pop(done[0])
            try:
                results[i] = EvalResult.from_json(ray.get(done[0]))
            except RayActorError as exc:
                self._requeue(slot, i, attempts, queue, exc)
                continue
            if on_result is not None:
                on_result(i, results[i])
        return results  # type: ignore[return-value]

    def _idle(self, running: dict[Any, tuple[int, int]]) -> list[int]:
        """The actor slots with no task in flight."""
        busy = {slot for slot, _ in running.values()}
        return [slot for slot in range(len(self.actors)) if slot not in busy]

    def _requeue(self, slot: int, i: int, attempts: list[int], queue: deque, exc: Exception) -> None:
        """Student ``i`` lost its actor for good: a fresh actor takes the slot and the student goes first in
        the queue, unless it has now killed :data:`MAX_ATTEMPTS` actors (it would kill them all: give up)."""
        attempts[i] += 1
        if attempts[i] >= MAX_ATTEMPTS:
            raise RuntimeError(f"student {i} of the batch killed {attempts[i]} actors in a row (out of memory?); "
                               f"giving up: {exc}") from exc
        self._replace(slot)
        queue.appendleft(i)

    def _replace(self, slot: int) -> None:
        """A fresh actor in the slot of one that is dead for good (its restarts spent, or killed for good)."""
        ray.kill(self.actors[slot], no_restart=True)
        self.actors[slot] = self._actor_cls.remote(self.threads)
        self.restarted += 1

    def local_pids(self) -> list[int]:
        """The processes of the local Ray this pool started (its servers and its actors); [] when it joined a
        running cluster. Recorded by the harness, so a killed driver's leftovers can be ended later."""
        if not self._owns_ray:
            return []
        node = getattr(ray._private.worker, "_global_node", None)
        pids = [info.process.pid for infos in (getattr(node, "all_processes", None) or {}).values() for info in infos]
        return pids + [int(ray.get(actor.pid.remote())) for actor in self.actors]

    def shutdown(self) -> None:
        """Stop the actors, and Ray itself when this pool started it."""
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []
        if self._owns_ray:
            ray.shutdown()


def _pythonpath() -> str:
    """The actors' PYTHONPATH: the repository root first, then whatever the driver had."""
    return os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)


def _gpu_share(workers: int, gpus: float | None) -> float:
    """Each actor's GPU share, checked against the cluster (actors that cannot fit would wait forever)."""
    resources = ray.cluster_resources()
    total_gpus, total_cpus = resources.get("GPU", 0.0), resources.get("CPU", 0.0)
    share = (1.0 if total_gpus else 0.0) if gpus is None else float(gpus)
    if share < 0 or share > 1 and share != int(share):
        raise ValueError(f"worker_gpus must be a fraction of one GPU or a whole number, got {gpus}")
    if workers * share > total_gpus + 1e-9:
        raise ValueError(f"{workers} workers x {share:g} GPU need {workers * share:g} GPUs; the Ray cluster has "
                         f"{total_gpus:g} (set run: worker_gpus: to a fraction, or use fewer --workers)")
    if workers > total_cpus:
        raise ValueError(f"{workers} workers need {workers} CPUs; the Ray cluster has {total_cpus:g}")
    return share

