"""Tabular benchmarks: the table file, build-table (resumable), the table env against the live env, an agent
through run_agent.py on a table, and the shipped tables re-scored live."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml

import envs  # noqa: F401  (registers the ids)
from envs.build_table import build_table, make_build_env, planned_actions
from envs.table import grid_of
from netcomp.cpu_numerics import cpu_has_avx2, cpu_numerics
from netcomp.jsonl import read_jsonl
from netcomp.tables import (
    TABLE_DIR,
    Grid,
    TableError,
    load_specs,
    read_table,
    resolve_spec,
    table_path,
    work_paths,
)
from netcomp.teachers import teacher_identity
from runner.recorder import read_records
from tests.conftest import TINY, cli

ROOT = Path(__file__).resolve().parent.parent
#: A tiny channel-ratio table: LeNet-5's 4 groups x 3 keep ratios (81 actions) on the tiny synthetic data.
TINY_SPEC = {"name": "tiny-cr", "env": "channel-ratio-lenet5-synthetic", "levels": 3, "fidelity": "smoke",
             "dataset_kwargs": dict(TINY)}
ENV = "netcomp/channel-ratio-lenet5-synthetic-v0"
#: What a live env and its table env may differ in: the seconds a training took this time.
TIMING = {"eval_seconds"}


@pytest.fixture(scope="module")
def tiny_table(tmp_path_factory):
    """The tiny table, built once through build-table's function (one thread: reproducible floats)."""
    out = tmp_path_factory.mktemp("tables") / "tiny-cr.smoke.jsonl.gz"
    report = build_table(TINY_SPEC, out=out, threads=1, progress=False)
    assert report.complete and report.rows == 81
    return out


def make(table=None, fidelity="table", **kw):
    """The tiny env, reset: the table env of ``table``, or the live env at another fidelity."""
    extra = {"table": str(table)} if table is not None else {}
    env = gym.make(ENV, fidelity=fidelity, dataset_kwargs=dict(TINY), disable_env_checker=True, **extra, **kw)
    env.reset()
    return env


def live_result(env, action, threads):
    """The live env's info for an action at a table's training seed and thread count, trained now."""
    base = env.unwrapped
    base.evaluator.cache.clear()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return base.evaluate_many([action])[0], base.last_result
    finally:
        torch.set_num_threads(before)


def rescore_exactly(table, env, count, seed=0):
    """Re-score ``count`` random trained rows of ``table`` live and assert the recorded values come back."""
    rng = np.random.default_rng(seed)
    trained = [r for r in table.rows if r["key"] is not None]
    grid = table.grid
    env.unwrapped.train_seed = table.train_seed
    for i in rng.choice(len(trained), size=count, replace=False):
        row = trained[int(i)]
        info, result = live_result(env, grid.action(row["action"]), table.header["provenance"]["threads"])
        assert not result.cached
        for field in ("valid", "accuracy", "loss", "params", "macs", "arch_key"):
            assert getattr(result, field) == row[field] or (field == "loss" and row[field] is None), field
        assert info["reward"] == row["reward"]


# ---------------------------------------------------------------------------- the file
def test_table_file_holds_provenance_and_every_action(tiny_table):
    table = read_table(tiny_table)
    h = table.header
    env = make(fidelity="smoke")
    assert h["teacher"]["sha256"] == teacher_identity(env.unwrapped.teacher)["sha256"]
    assert h["fidelity"]["name"] == "smoke" and h["fidelity"]["key"] == env.unwrapped.fidelity.key()
    assert h["provenance"]["torch"] == torch.__version__ and h["provenance"]["threads"] == 1
    assert h["provenance"]["device"] == "cpu" and "commit" in h["provenance"]
    assert h["provenance"]["cpu_numerics"] == cpu_numerics()  # what the kernels computed with, recorded
    assert h["env_id"] == ENV and h["grid"]["levels"] == [3, 3, 3, 3] and h["build"]["complete"]
    assert sorted(tuple(r["action"]) for r in table.rows) == list(Grid.from_json(h["grid"]).indices())
    stats = table.stats()
    assert stats["actions"] == 81 and stats["distinct_valid_students"] >= 60 and stats["distinct_valid_rewards"] > 1
    teacher_row = next(r for r in table.rows if r["action"] == [2, 2, 2, 2])  # keeps everything: not smaller
    assert not teacher_row["valid"] and teacher_row["key"] is None and teacher_row["eval_seconds"] == 0.0


def test_grid_snaps_box_actions_and_enumerates_discrete_spaces():
    grid = Grid("box", 2, (8, 8), -1.0, 1.0)
    assert grid.count == 64 and grid.action((0, 7)).tolist() == [-1.0, 1.0]
    snapped = grid.snap(np.array([-0.93, 0.2]))
    assert snapped.tolist() == [grid.action((0, 0))[0], grid.action((0, 4))[1]]
    assert Grid("box", 1, (3,), -1.0, 1.0).snap(np.array([-0.5])).tolist() == [0.0]  # a tie goes up
    assert grid_of(gym.spaces.MultiBinary(9), None, ()).count == 512
    with pytest.raises(TableError, match="levels"):
        grid_of(gym.spaces.Box(-1, 1, (4,)), None, ())


def test_a_sample_table_holds_distinct_valid_students_drawn_by_seed(tiny_table, tmp_path):
    first = build_table(TINY_SPEC, out=tmp_path / "a.jsonl.gz", sample=5, seed=3, threads=1, progress=False)
    again = build_table(TINY_SPEC, out=tmp_path / "b.jsonl.gz", sample=5, seed=3, threads=1, progress=False)
    rows = read_table(first.path).rows
    assert first.complete and len(rows) == 5 and len({r["key"] for r in rows}) == 5 and all(r["valid"] for r in rows)
    assert [r["action"] for r in rows] == [r["action"] for r in read_table(again.path).rows]
    assert read_table(first.path).header["plan"] == {"sample": 5, "seed": 3}
    full = {tuple(r["action"]): r["accuracy"] for r in read_table(tiny_table).rows}
    assert all(full[tuple(r["action"])] == r["accuracy"] for r in rows)  # the same training as the full table


def test_a_sample_build_cut_short_has_scored_the_first_students_of_the_draw(tiny_table, tmp_path):
    out = tmp_path / "s.jsonl.gz"
    spec = resolve_spec(TINY_SPEC)
    env = make_build_env(spec, spec.fidelity, tmp_path / "c.jsonl", "cpu", None)
    draw = planned_actions(env, {"grid": grid_of(env.action_space, spec.levels, ()).to_json()}, 6, 4)
    # the draw's order, not the grid's: a partial sample is a random subset, not the grid's first students
    assert draw != sorted(draw)
    part = build_table(TINY_SPEC, out=out, sample=6, seed=4, threads=1, limit=2, progress=False)
    assert not part.complete and [tuple(r["action"]) for r in read_table(out).rows] == sorted(draw[:2])
    rest = build_table(TINY_SPEC, out=out, sample=6, seed=4, threads=1, progress=False)
    assert rest.complete and rest.trained == 4
    assert [tuple(r["action"]) for r in read_table(out).rows] == sorted(draw)


def test_a_partial_table_without_its_work_files_resumes_from_the_table(tiny_table, tmp_path):
    # a partial table committed on one machine and resumed on a fresh clone, where the work files never were
    out = tmp_path / "s.jsonl.gz"
    build_table(TINY_SPEC, out=out, sample=6, seed=4, threads=1, limit=2, progress=False)
    first = read_table(out).rows
    for path in work_paths(out):
        path.unlink()
    rest = build_table(TINY_SPEC, out=out, sample=6, seed=4, threads=1, progress=False)
    assert rest.complete and rest.resumed_rows == 2 and rest.trained == 4
    rows = {tuple(r["action"]): r for r in read_table(out).rows}
    assert all(rows[tuple(r["action"])] == r for r in first)  # kept as scored, not trained again
    assert len(read_table(out).header["build"]["sessions"]) == 2
    data = out.read_bytes()
    again = build_table(TINY_SPEC, out=out, sample=6, seed=4, threads=1, progress=False)
    assert again.trained == 0 and again.resumed_rows == 6 and out.read_bytes() == data  # a complete table: untouched
    assert not any(path.exists() for path in work_paths(out))
    with pytest.raises(TableError, match="other settings.*plan"):  # another sample: refused, the table kept
        build_table(TINY_SPEC, out=out, sample=6, seed=5, threads=1, progress=False)
    assert read_table(out).rows == list(rows.values())

# ---------------------------------------------------------------------------- the table env
def test_table_env_gives_the_live_env_info(tiny_table):
    table, live = make(tiny_table), make(fidelity="smoke")
    table.reset(seed=5)
    grid = table.unwrapped.grid
    for index in [(0, 0, 0, 0), (2, 1, 0, 2), (1, 2, 2, 1), (2, 2, 2, 2)]:
        _, reward, terminated, _, info = table.step(grid.action(index))
        live_info, _ = live_result(live, grid.action(index), 1)
        assert terminated and reward == live_info["reward"]
        assert {k: v for k, v in info.items() if k not in TIMING} == \
            {k: v for k, v in live_info.items() if k not in TIMING}
    seq = make(tiny_table, mode="sequential")
    seq.reset()
    for value in grid.action((1, 0, 2, 1)):
        *_, info = seq.step(np.array([value], np.float32))
    assert info["widths"] == live.unwrapped.evaluate_many([grid.action((1, 0, 2, 1))])[0]["widths"]


def test_box_actions_snap_and_lookups_run_on_a_simulated_clock(tiny_table):
    env = make(tiny_table)
    table = read_table(tiny_table)
    env.reset(seed=0)
    *_, info = env.step(np.array([-0.9, 0.1, 0.6, 0.99], np.float32))
    row = next(r for r in table.rows if r["action"] == [0, 1, 2, 2])
    assert info["accuracy"] == row["accuracy"] and info["eval_seconds"] == row["eval_seconds"]
    assert info["raw_ratios"] == pytest.approx([0.2, 0.6, 1.0, 1.0])
    env.step(np.array([-1.0, 0.0, 1.0, 1.0], np.float32))  # the same student again: a cache hit
    ev = env.unwrapped.evaluator
    assert env.unwrapped.last_result.cached and ev.trainings == 1 and ev.trained_seconds == row["eval_seconds"]
    assert env.unwrapped.train_seed == table.train_seed


def test_any_reward_and_target_work_on_a_table(tiny_table):
    env = make(tiny_table, reward="amc-acc")
    *_, info = env.step(np.array([0.0, 0.0, 0.0, 0.0]))
    assert info["reward"] == info["accuracy"]
    env = make(tiny_table, target={"macs": 0.5})
    *_, small = env.step(np.array([-1.0, -1.0, -1.0, -1.0]))
    *_, large = env.step(np.array([1.0, 1.0, 1.0, 0.0]))
    assert small["valid"] and small["reward"] == small["accuracy"]
    assert not large["valid"] and large["invalid_reason"].startswith("over target")
    assert env.unwrapped.evaluator.trainings == 1  # the student over the target was never looked up


def test_a_table_refuses_what_it_does_not_hold(tiny_table, tmp_path):
    with pytest.raises(TableError, match="lbound=0.3"):
        make(tiny_table, lbound=0.3)
    with pytest.raises(TableError, match="not of netcomp/removal"):
        gym.make("netcomp/removal-lenet5-synthetic-v0", fidelity="table", table=str(tiny_table),
                 dataset_kwargs=dict(TINY))
    with pytest.raises(TableError, match="no shipped table"):
        make()
    partial = tmp_path / "partial.smoke.jsonl.gz"
    build_table(TINY_SPEC, out=partial, threads=1, limit=4, progress=False)
    env = make(partial)
    env.step(Grid.from_json(read_table(partial).header["grid"]).action((0, 0, 0, 1)))  # in the first 4
    with pytest.raises(TableError, match="is not in table tiny-cr.*partial table: 4 of 81"):
        env.step(np.array([1.0, 1.0, 0.0, 0.0]))
    base = env.unwrapped
    with pytest.raises(TableError, match="own weights"):
        base.score_student(base.student_for(np.zeros(4)), weights={})


def test_live_env_reproduces_random_table_entries_exactly(tiny_table):
    rescore_exactly(read_table(tiny_table), make(fidelity="smoke"), count=4)


# ---------------------------------------------------------------------------- agents and the harness
def _table_config(tmp_path, table):
    path = tmp_path / "table.yaml"
    path.write_text(yaml.safe_dump({"run": {"fidelity": "table", "threads": 1, "export": False,
                                            "dataset_kwargs": dict(TINY),
                                            "env_kwargs": {"table": str(table)}}}))
    return str(path)


def test_random_agent_runs_on_a_table_through_run_agent_and_resumes(tiny_table, tmp_path):
    config, out = _table_config(tmp_path, tiny_table), tmp_path / "run"
    args = ["--env", "channel-ratio-lenet5-synthetic", "--agent", "random", "--config", config]
    assert cli(*args, "--budget", 12, "--out", out) == 0
    assert cli("--resume", out, "--budget", 24) == 0  # an extension: the first 12 replay from the cache
    records = read_records(out / "evaluations.jsonl")
    summary = json.loads((out / "summary.json").read_text())
    assert len(records) == 24 and summary["comparable"], summary["not_comparable"]
    table = read_table(tiny_table)
    rows = {tuple(r["action"]): r for r in table.rows}
    for record in records:
        snapped = table.grid.snap(np.asarray(record["action"], np.float64))
        index = tuple(int(k) for k in np.rint((snapped + 1) / 2 * 2))  # 3 levels on [-1, 1]
        assert record["accuracy"] == rows[index]["accuracy"] and record["replay"]["fidelity"] == "smoke"


def test_budget_seconds_spend_the_recorded_training_seconds(tiny_table, tmp_path):
    table = read_table(tiny_table)
    budget = 10 * float(np.median([r["eval_seconds"] for r in table.rows if r["key"]]))
    out = tmp_path / "seconds"
    assert cli("--env", "channel-ratio-lenet5-synthetic", "--agent", "random", "--config",
               _table_config(tmp_path, tiny_table), "--budget-seconds", budget, "--out", out) == 0
    records = read_records(out / "evaluations.jsonl")
    spent = sum(r["eval_seconds"] for r in records if not r["cached"])
    assert spent >= budget and spent - max(r["eval_seconds"] for r in records) < budget


# ---------------------------------------------------------------------------- a killed build
def test_a_killed_build_resumes_with_nothing_retrained(tmp_path):
    spec = tmp_path / "kill.yaml"
    spec.write_text(yaml.safe_dump({**TINY_SPEC, "name": "kill", "levels": 4}))
    out = tmp_path / "kill.smoke.jsonl.gz"
    rows_path, cache_path = work_paths(out)
    proc = subprocess.Popen([sys.executable, "-m", "netcomp", "build-table", str(spec), "--out", str(out),
                             "--threads", "1", "--batch", "1", "--quiet"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and len(_scored(rows_path, repair=False)) < 5:
        time.sleep(0.02)
    assert proc.poll() is None, f"the build ended before it was killed: {proc.stderr.read().decode()[-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(_scored(rows_path))
    cached = {row["cache_key"].partition("|")[0] for row in read_jsonl(cache_path)}
    report = build_table(spec, out=out, threads=1, batch=1, limit=8, progress=False)
    new = [r for r in read_table(out).rows[done:]]
    assert report.resumed_rows == done >= 5 and report.rows == done + 8
    assert report.trained == len({r["key"] for r in new if r["key"] is not None} - cached)
    assert not report.complete and rows_path.exists()  # the rest is built by the next call
    sessions = read_table(out).header["build"]["sessions"]
    assert len(sessions) == 2 and all("commit" in s and s["started"] for s in sessions)
    assert all(s["cpu"]["capability"] == torch.backends.cpu.get_cpu_capability() for s in sessions)


def _scored(rows_path, repair=True):
    """The scored rows a build in progress has written (not its header or session lines)."""
    return [line for line in read_jsonl(rows_path, repair=repair) if "action" in line]


# ---------------------------------------------------------------------------- the shipped tables (real data)
SHIPPED = {name: spec for name, spec in load_specs().items() if table_path(spec).exists()}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_table_reproduces_live_at_its_thread_count(name):
    """Loads the table (never builds it) and re-scores 3 random entries live on this CPU, exactly: the table
    was built under the CPU pin (netcomp.cpu_numerics), which this process computes under too."""
    spec = SHIPPED[name]
    table = read_table(table_path(spec))
    assert table.header["build"]["complete"], "a shipped table is complete: its optimum is known"
    if table.header["provenance"]["device"] != "cpu":
        pytest.skip("built on a GPU: reproducible on that device only")
    assert table.header["provenance"]["cpu_numerics"]["pinned"], "a shipped table is built under the CPU pin"
    if not cpu_has_avx2():
        pytest.skip("this CPU has no AVX2, so it cannot compute under the pin the table was built with")
    assert cpu_numerics()["pinned"]
    env = gym.make(envs.parse_env_id(spec.env), fidelity=table.fidelity_spec(),  # the fashionmnist data
                   disable_env_checker=True, device="cpu", **spec.env_kwargs)
    rescore_exactly(table, env, count=3, seed=1)
    tab = gym.make(envs.parse_env_id(spec.env), fidelity="table", disable_env_checker=True, **spec.env_kwargs)
    assert tab.unwrapped.table.path == table_path(spec).resolve() and TABLE_DIR.exists()


def test_a_block_removal_table_serves_the_removal_env(tmp_path):
    spec = {"name": "tiny-blocks", "env": "removal-resnet20-synthetic", "env_kwargs": {"granularity": "block"},
            "fidelity": "smoke", "dataset_kwargs": dict(TINY)}
    out = tmp_path / "blocks.smoke.jsonl.gz"
    report = build_table(spec, out=out, threads=1, limit=6, progress=False)
    assert report.planned == 512 and report.rows == 6
    kw = {"dataset_kwargs": dict(TINY), "disable_env_checker": True, "granularity": "block"}
    table = gym.make("netcomp/removal-resnet20-synthetic-v0", fidelity="table", table=str(out), **kw)
    live = gym.make("netcomp/removal-resnet20-synthetic-v0", fidelity="smoke", **kw)
    table.reset(seed=0)
    action = np.array([0, 0, 0, 0, 0, 0, 1, 0, 1], np.int8)  # the sixth action in grid order
    *_, info = table.step(action)
    live_info, _ = live_result(live, action, 1)
    assert {k: v for k, v in info.items() if k not in TIMING} == {k: v for k, v in live_info.items() if k not in TIMING}
    with pytest.raises(TableError, match="granularity='layer'"):
        gym.make("netcomp/removal-resnet20-synthetic-v0", fidelity="table", table=str(out), dataset_kwargs=dict(TINY))


def test_a_comparison_on_a_table_reports_regret_against_the_known_optimum(tiny_table, tmp_path):
    """The table is complete, so its optimum is known: the leaderboard's regret is the table's best reward minus
    each run's best, regret.png is drawn, and a table comparison spends no time on final trainings."""
    config, out = _table_config(tmp_path, tiny_table), tmp_path / "cmp"
    assert cli("--env", "channel-ratio-lenet5-synthetic", "--agent", "random", "--seeds", 2, "--budget", 6,
               "--config", config, "--out", out) == 0
    optimum = read_table(tiny_table).stats()["best_reward"]
    regrets = []
    for seed in (0, 1):
        run = out / f"random-s{seed}"
        summary = json.loads((run / "summary.json").read_text())
        assert summary["table_optimum"] == optimum and summary["best_student"] is None
        regrets.append(optimum - max(r["reward"] for r in read_records(run / "evaluations.jsonl")))
    row = next(line for line in (out / "leaderboard.csv").read_text().splitlines() if line.startswith("random,"))
    header = (out / "leaderboard.csv").read_text().splitlines()[0].split(",")
    assert float(row.split(",")[header.index("regret_mean")]) == pytest.approx(np.mean(regrets))
    assert min(regrets) >= 0 and (out / "regret.png").exists()
    from runner.compare import best_students

    assert best_students(out, {"agents": ["random"], "seeds": [0, 1]}) == [  # skipped, not "no valid student"
        "  random: valid students found, but none had the final training (a comparison on a table skips it)"]


def test_a_partial_table_has_no_known_optimum_so_no_regret(tiny_table):
    """The regret is measured against the table's optimum, which only a complete table knows."""
    import types

    from runner.rundir import table_optimum

    table = read_table(tiny_table)
    agent = types.SimpleNamespace(env=types.SimpleNamespace(unwrapped=types.SimpleNamespace(table=table)))
    assert table_optimum(agent, {"run": {}}) == table.stats()["best_reward"]
    table.header["build"]["complete"] = False
    assert table_optimum(agent, {"run": {}}) is None
