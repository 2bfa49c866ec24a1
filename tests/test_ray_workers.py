"""Evaluations on Ray actors (``--workers``): the same records, cache and budget as one process, faults included.

One local Ray cluster of 2 CPU workers serves the whole module (started once, shut down at the end).
"""

import sys
import time
from pathlib import Path

import pytest
import torch

from netcomp.jsonl import read_jsonl
from runner.recorder import read_records
from tests.conftest import TINY, cli

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parent.parent
KEYS = ("index", "action", "arch_key", "reward", "valid", "params")
BUDGET = 6


def _records(out: Path) -> list[dict]:
    return [{k: r.get(k) for k in KEYS} for r in read_records(out / "evaluations.jsonl")]


def _run(out: Path, agent: str, config: str, *extra) -> None:
    assert cli("--env", "removal-resnet20-synthetic", "--agent", agent, "--budget", BUDGET, "--config", config,
               "--seed", 3, "--device", "cpu", "--out", out, *extra) == 0


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> str:
    import yaml

    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump({"run": {"fidelity": "smoke", "threads": 1, "export": False,
                                            "dataset_kwargs": dict(TINY),
                                            "save_best": False}}))
    return str(path)


@pytest.fixture(scope="module")
def references(tmp_path_factory, config_file):
    """One-process runs (computed before any Ray test, so they also tell whether a plain run imports Ray)."""
    root = tmp_path_factory.mktemp("refs")
    ray_before = "ray" in sys.modules
    with torch.random.fork_rng(devices=[]):
        for agent in ("random", "n2n"):
            _run(root / agent, agent, config_file)
    return {"random": _records(root / "random"), "n2n": _records(root / "n2n"),
            "ray_before": ray_before, "ray_after": "ray" in sys.modules}


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster of 2 CPUs for the module; actors import netcomp from the repository root."""
    import ray

    from netcomp.workers import _pythonpath

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": _pythonpath(), "OMP_NUM_THREADS": "1"}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def pool(cluster):
    """2 actors, the cluster's 2 CPUs (the run tests come first: each run's own pool is gone by then)."""
    from netcomp.workers import WorkerPool

    pool = WorkerPool(2)
    yield pool
    pool.shutdown()


@pytest.fixture(scope="module")
def students():
    """An env on the tiny data and a batch of 4 distinct students from seeded random actions."""
    import gymnasium as gym

    import envs  # noqa: F401  (registers the ids)
    from tests.conftest import TINY as tiny

    env = gym.make("netcomp/removal-resnet20-synthetic-v0", fidelity="smoke", dataset_kwargs=dict(tiny),
                   device="cpu", disable_env_checker=True)
    env.action_space.seed(5)
    base = env.unwrapped
    batch = {}
    while len(batch) < 4:
        arch = base.student_for(env.action_space.sample())
        if base.evaluator.problem(arch) is None:
            batch[base.evaluator.cache_key(arch, base.evaluator.inherit, 0)] = arch
    return base, list(batch.values())


def _fresh_evaluator(base, cache_path=None):
    from netcomp.evaluator import Evaluator

    ev = base.evaluator
    return Evaluator(ev.teacher, ev.dataset, ev.fidelity, device="cpu", inherit=ev.inherit, cache_path=cache_path,
                     min_linear_inputs=ev.min_linear_inputs, require_smaller=ev.require_smaller, split=ev.split,
                     size_metrics=ev.size_metrics, inherit_bn_stats=ev.inherit_bn_stats)


def _plain(results):
    return [{k: v for k, v in r.to_json().items() if k not in ("eval_seconds", "cached")} for r in results]


def test_a_run_without_workers_does_not_import_ray(references):
    if references["ray_before"]:
        pytest.skip("another test module imported ray earlier in this session")
    assert not references["ray_after"]


@pytest.mark.parametrize("agent", ["random", "n2n"])
def test_two_workers_give_the_records_of_one_process(agent, references, cluster, config_file, tmp_path):
    _run(tmp_path / agent, agent, config_file, "--workers", 2)
    assert _records(tmp_path / agent) == references[agent]
    assert cluster.is_initialized()  # the run used the module's cluster and left it running


def test_pool_results_equal_the_in_process_evaluator(students, pool):
    base, batch = students
    local = _fresh_evaluator(base).evaluate_many(batch, seed=0)
    pooled_ev = _fresh_evaluator(base)
    pool.attach(pooled_ev)
    pooled = pooled_ev.evaluate_many(batch, seed=0)
    assert _plain(pooled) == _plain(local)
    assert pooled_ev.trainings == len(batch)
    again = pooled_ev.evaluate_many(batch, seed=0)  # cache hits: nothing trains again
    assert all(r.cached for r in again) and pooled_ev.trainings == len(batch)


@pytest.mark.parametrize("for_good", [True, False], ids=["replaced-by-the-pool", "restarted-by-ray"])
def test_a_killed_actor_loses_nothing_and_counts_nothing_twice(for_good, students, pool, cluster, tmp_path):
    """Killed for good, the pool starts another actor and re-queues the student; killed with a restart, Ray
    restarts the actor and retries the task (``max_task_retries``). Either way the batch equals one process's."""
    base, batch = students
    local = _fresh_evaluator(base).evaluate_many(batch, seed=1 + for_good)
    ev = _fresh_evaluator(base, cache_path=tmp_path / "cache.jsonl")
    pool.attach(ev)
    killed = []

    def kill_first_in_flight(p, running):
        if not killed:
            time.sleep(0.3)  # the warm actor is training its student now
            slot, _ = next(iter(running.values()))
            killed.append(slot)
            cluster.kill(p.actors[slot], no_restart=for_good)

    pids = cluster.get([a.pid.remote() for a in pool.actors])
    pool.on_submit = kill_first_in_flight
    restarted = pool.restarted
    try:
        pooled = ev.evaluate_many(batch, seed=1 + for_good)
    finally:
        pool.on_submit = None
    assert killed and pool.restarted == restarted + for_good
    assert cluster.get(pool.actors[killed[0]].pid.remote()) != pids[killed[0]]  # a new process did the work
    assert _plain(pooled) == _plain(local)
    assert ev.trainings == len(batch)
    rows = read_jsonl(tmp_path / "cache.jsonl")
    assert len(rows) == len(batch) == len({r["cache_key"] for r in rows})  # each student stored once


@pytest.mark.expensive
def test_a_killed_driver_resumes_to_the_records_of_one_process(references, config_file, tmp_path):
    """SIGKILL the driver of a 2-worker N2N run once a student of a batch is in cache.jsonl; the resumed run
    (workers again) ends with exactly the one-process records, the finished students coming from the cache."""
    import os
    import signal
    import subprocess

    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "run_agent.py"), "--env", "removal-resnet20-synthetic", "--agent", "n2n",
           "--budget", str(BUDGET), "--config", config_file, "--seed", "3", "--device", "cpu", "--out", str(out),
           "--workers", "2"]
    # its own process group: the kill takes the driver's local Ray with it (as losing the machine would)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline and not read_jsonl(out / "cache.jsonl", repair=False):
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(read_records(out / "evaluations.jsonl")) < BUDGET  # killed mid-run
    done = subprocess.run([sys.executable, str(ROOT / "run_agent.py"), "--resume", str(out), "--workers", "2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _records(out) == references["n2n"]
    keys = [r["cache_key"] for r in read_jsonl(out / "cache.jsonl")]
    assert len(keys) == len(set(keys))  # no student trained twice


def test_a_killed_drivers_local_ray_is_ended_by_the_next_start(config_file, tmp_path):
    """SIGKILL only the driver (not its process group): the local Ray processes it started (recorded in
    ray_pids.json) are gone once the next start in that run directory has run: Ray's own reaper usually ends
    them within seconds, and the next start ends any it left (end_stale_ray) before starting its own."""
    import json
    import os
    import signal
    import subprocess


    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "run_agent.py"), "--env", "removal-resnet20-synthetic", "--agent", "random",
           "--budget", "40", "--config", config_file, "--device", "cpu", "--out", str(out), "--workers", "1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline and not (out / "ray_pids.json").exists():
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    pids = json.loads((out / "ray_pids.json").read_text())
    assert len(pids) >= 3  # Ray's servers and the actor
    done = subprocess.run([sys.executable, str(ROOT / "run_agent.py"), "--resume", str(out), "--budget", "41"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not (out / "ray_pids.json").exists()
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()
                and b"ray" in Path(f"/proc/{pid}/cmdline").read_bytes().lower()]


def test_end_stale_ray_ends_only_ray_processes_it_recorded(tmp_path):
    """A recorded pid that is still a Ray process is killed; one that is not Ray's (a reused pid) is left."""
    import json
    import subprocess

    from runner.rundir import RAY_PIDS, end_stale_ray

    fake_ray = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "ray::raylet"])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    for child, shown in ((fake_ray, b"ray::raylet"), (other, b"time.sleep")):  # exec'd: /proc shows its argv
        deadline = time.time() + 30                           # (until then it shows pytest's, under load)
        while shown not in Path(f"/proc/{child.pid}/cmdline").read_bytes() and time.time() < deadline:
            time.sleep(0.01)
    try:
        (tmp_path / RAY_PIDS).write_text(json.dumps([fake_ray.pid, other.pid, 999999999]))
        assert end_stale_ray(tmp_path) == [fake_ray.pid]
        assert fake_ray.wait(timeout=10) != 0 and other.poll() is None
        assert not (tmp_path / RAY_PIDS).exists()
    finally:
        other.kill()
        fake_ray.kill()


def test_actors_train_with_the_runs_thread_count(students, pool):
    """Actors train with the pool's (the run's recorded) torch thread count, and a student trained at 2 threads
    on an actor equals one trained at 2 threads here, so a --workers run at threads > 1 replays exactly.
    (The module's 2-actor pool fills the 2-CPU cluster: its slot 0 is replaced by a 2-thread actor and back.)"""
    import ray

    from runner.rundir import torch_threads

    base, batch = students
    with torch_threads(2):
        local = _fresh_evaluator(base).evaluate_many(batch[:2], seed=0)
    assert ray.get(pool.actors[0].threads.remote()) == pool.threads == 1
    pool.threads = 2
    try:
        pool._replace(0)
        pool._replace(1)
        assert [ray.get(actor.threads.remote()) for actor in pool.actors] == [2, 2]
        ev = _fresh_evaluator(base)
        pool.attach(ev)
        assert _plain(ev.evaluate_many(batch[:2], seed=0)) == _plain(local)
    finally:
        pool.threads = 1
        pool._replace(0)
        pool._replace(1)


def test_actors_compute_under_the_drivers_cpu_numerics_or_the_pool_refuses(pool, monkeypatch):
    """Every CPU actor's kernels compute as the driver's do (a table records the driver's numerics for all its
    rows); a pool whose actors differ is shut down with an error naming both."""
    import types

    import ray

    import netcomp.workers as workers
    from netcomp.cpu_numerics import cpu_numerics

    assert [ray.get(actor.numerics.remote()) for actor in pool.actors] == [cpu_numerics()] * 2
    ended = []
    fake = types.SimpleNamespace(actors=pool.actors, shutdown=lambda: ended.append(True))
    monkeypatch.setattr(workers, "cpu_numerics", lambda: {**cpu_numerics(), "capability": "AVX512"})
    with pytest.raises(RuntimeError, match="CPU kernels differ"):
        workers.WorkerPool._check_numerics(fake)
    assert ended == [True]
