"""The operating-point protocol: which method's student is the most accurate at 2x, 4x, 8x fewer MACs (or params)
than the same teacher, after the same fine-tune, and what did its search cost?

``python run_agent.py --env ENV --agent a,b,... --seeds N --targets 0.5,0.25,0.125 [--target-metric macs|params]
[--budget B | --budget-seconds S]``
runs every agent x seed x target as ordinary run directories, each with the env option ``target`` set to
``{metric: fraction}`` (a student above it is invalid before anything trains; the default reward is then the
validation accuracy), in ``DIR/t<fraction>/<agent>-s<seed>/``. Each ``DIR/t<fraction>/`` is an ordinary
comparison directory (``compare.yaml``; ``--resume DIR/t<fraction>`` writes its best-reward leaderboard).

Then each run's best valid student (the highest search reward among its students at or below the target,
checked again with the engine's counters, :mod:`netcomp.metrics`) gets the fidelity's protocol fine-tune
(:meth:`netcomp.evaluator.Evaluator.train_protocol`: one named recipe, KD from the same teacher, starting from
the student's inherited weights or a white-box agent's submitted ones) and, as the baseline every pruning study
needs, the same recipe from re-initialised weights (train-from-scratch of the same architecture: Liu et al.,
"Rethinking the value of network pruning", ICLR 2019, arXiv:1810.05270): a ``<agent> (scratch)`` row beside
each agent's row. The protocol directory gets:

- ``protocol.yaml``: its targets, metric and whether scratch rows are trained (written when the target
  directories' ``compare.yaml`` are, before anything trains);
- ``protocol.md`` / ``protocol.csv``: one row per (target, agent) and weights (inherited or scratch): the
  achieved MACs and params as fractions of the teacher's, the speed-up (teacher MACs / student MACs), the
  compression ratio (teacher params / student params), the TEST accuracy after the protocol fine-tune (mean
  ± sample std over seeds, n), the search's training seconds (students' and a white-box agent's own), and how
  many seeds ``missed`` (no valid student at or below the target: the row is kept, never dropped);
- ``curve.png``: test accuracy against speed-up and against compression ratio (log x), one line with error
  bars per agent (dashed: its scratch baseline), the teacher marked.

Each run's fine-tunes are cached in ``<run>/protocol.json`` (atomically), so a killed protocol resumes with
``--resume DIR`` without re-running a finished run or fine-tune.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import time
from pathlib import Path
from typing import Any

import yaml

from netcomp.evaluator import TARGET_METRICS, check_target
from netcomp.files import remove_stale_temporaries, write_text_atomic
from runner.compare import (
    COMPARE_FILE,
    _resume_spec,
    _run_one,
    comparison_spec,
    config_mismatch,
    mean_std,
    run_configs,
    run_label,
    run_result,
)
from runner.recorder import best, read_records
from runner.report import save_figure
from runner.rundir import (
    CLI_ONLY,
    RUN_DEFAULTS,
    AgentOverspent,
    ConfigError,
    check_out,
    locked,
    read_yaml_file,
    torch_threads,
    user_input,
)

PROTOCOL_FILE = "protocol.yaml"
#: A run's cached protocol fine-tunes (its best student's report, inherited and scratch).
CELL_FILE = "protocol.json"
#: protocol.yaml's keys.
PROTOCOL_KEYS = ("targets", "metric", "scratch")
#: How a row's student started the protocol fine-tune: from the search's weights, or re-initialised.
STARTS = ("inherited", "scratch")
#: Table columns: (header, row field, format).
COLUMNS = (("MACs / teacher", "macs_fraction", "{:.3f}"), ("params / teacher", "params_fraction", "{:.3f}"),
           ("speed-up", "speedup", "{:.2f}x"), ("compression", "compression_ratio", "{:.2f}x"),
           ("test acc", "test_accuracy", "{:.4f}"), ("search train s", "search_seconds", "{:.1f}"),
           ("fine-tune s", "finetune_seconds", "{:.1f}"))


# ---------------------------------------------------------------------------- the command
def protocol_command(args: argparse.Namespace) -> int:
    """Run (or resume) a protocol and print its table; 0 when every run finished."""
    with user_input():  # flags, configs and saved specs: a bad value is one line, exit 2
        out, specs, protocol = _start_or_resume(args)
        configs = protocol_configs(specs)  # every agent checked before anything trains
    with locked(out):
        remove_stale_temporaries(out)
        if not (out / PROTOCOL_FILE).exists():
            _write_specs(out, specs, protocol)
        _check_unmixed(out, configs)
        replays: dict[str, Any] = {}
        finetunes = known_finetunes(out)
        cells = [(t, agent, seed, config) for t, per in configs.items() for (agent, seed), config in per.items()]
        for i, (target, agent, seed, config) in enumerate(cells, 1):
            run_dir = out / target_label(target) / run_label(agent, seed)
            print(f"\n[{i}/{len(cells)}] target {protocol['metric']} {target:g}: {agent} seed {seed} -> {run_dir}",
                  flush=True)
            try:
                _run_one(config, run_dir)
            except AgentOverspent as exc:  # that run ended with its summary; the others still run
                print(f"warning: {run_dir.name}: {exc}", flush=True)
            finetune_cell(run_dir, config, protocol["metric"], target, bool(protocol["scratch"]), replays, finetunes)
        for env in replays.values():
            env.close()
        rows = write_protocol(out, protocol, next(iter(specs.values())))
        (out / "lock").unlink(missing_ok=True)  # a finished protocol holds no lock file (as a finished run)
    print(f"\nProtocol ({out}):")
    print(markdown_table(rows))
    return 0


def protocol_configs(specs: dict[float, dict]) -> dict[float, dict[tuple[str, int], dict]]:
    """Every run's resolved config, per target (:func:`runner.compare.run_configs`), without the shared final
    training: the protocol's fine-tune replaces it."""
    configs = {target: run_configs(spec) for target, spec in specs.items()}
    for per_target in configs.values():
        for config in per_target.values():
            config["run"].update(save_best=False, shared_final=False)
    return configs


def _write_specs(out: Path, specs: dict[float, dict], protocol: dict[str, Any]) -> None:
    """Each target directory's compare.yaml (as a comparison saves it: no command-line-only setting), then
    protocol.yaml, the marker of a protocol that may be resumed."""
    for target, spec in specs.items():
        saved = {**spec, "run": {**spec["run"], **{k: RUN_DEFAULTS[k] for k in CLI_ONLY if k in spec["run"]}}}
        write_text_atomic(out / target_label(target) / COMPARE_FILE, yaml.safe_dump(saved, sort_keys=False))
    write_text_atomic(out / PROTOCOL_FILE, yaml.safe_dump(protocol, sort_keys=False))


def _start_or_resume(args: argparse.Namespace) -> tuple[Path, dict[float, dict], dict[str, Any]]:
    """(the protocol directory, each target's comparison spec, protocol.yaml's contents) of a new protocol or
    of the one ``--resume`` names (whose flags may not change it)."""
    if args.resume:
        out = Path(args.resume)
        protocol = read_protocol(out)
        if protocol_settings(args, protocol) != protocol:
            raise ConfigError(f"--targets, --target-metric and --no-scratch cannot change the protocol in {out}; it "
                              f"is fixed by {out / PROTOCOL_FILE} ({protocol})")
        if args.out and Path(args.out).resolve() != out.resolve():
            raise ConfigError(f"--out {args.out} with --resume {out}: a resumed protocol stays in its directory")
        flags = argparse.Namespace(**{**vars(args), "out": None})
        return out, {t: _resume_spec(out / target_label(t), flags) for t in protocol["targets"]}, protocol
    protocol = protocol_settings(args)
    base = comparison_spec(args)
    if "target" in (base["run"].get("env_kwargs") or {}):
        raise ConfigError("env_kwargs target is set by the protocol itself (--targets, --target-metric)")
    out = Path(args.out or f"runs/protocol-{base['env']}-{time.strftime('%Y%m%d-%H%M%S')}")
    check_out(out)
    if (out / PROTOCOL_FILE).exists():
        raise ConfigError(f"{out} already holds a protocol; use --resume {out} or another --out")
    return out, {t: target_spec(base, protocol["metric"], t) for t in protocol["targets"]}, protocol


def protocol_settings(args: argparse.Namespace, saved: dict[str, Any] | None = None) -> dict[str, Any]:
    """protocol.yaml's contents from the flags (``saved``'s where a flag is not given): the targets (fractions
    in (0, 1], distinct, in the order given), the metric and whether scratch rows are trained."""
    saved = saved or {"targets": None, "metric": "macs", "scratch": True}
    targets = parse_targets(args.targets) if getattr(args, "targets", None) is not None else saved["targets"]
    if not targets:
        raise ConfigError("a protocol needs --targets, e.g. --targets 0.5,0.25,0.125 (fractions of the teacher's "
                          "MACs, or params with --target-metric params)")
    metric = getattr(args, "target_metric", None) or saved["metric"]
    if metric not in TARGET_METRICS:
        raise ConfigError(f"--target-metric {metric!r} is not one of {', '.join(TARGET_METRICS)}")
    scratch = saved["scratch"] if getattr(args, "no_scratch", None) is None else not args.no_scratch
    return {"targets": targets, "metric": metric, "scratch": bool(scratch)}


def parse_targets(text: str | list) -> list[float]:
    """``0.5,0.25,0.125`` as a list of distinct fractions in (0, 1]; ConfigError naming a bad value."""
    parts = text if isinstance(text, list) else [p.strip() for p in str(text).split(",") if p.strip()]
    targets = []
    for part in parts:
        try:
            value = float(part)
            check_target({"macs": value})
        except (TypeError, ValueError):
            raise ConfigError(f"--targets {text!r}: {part!r} is not a fraction of the teacher's in (0, 1]") from None
        targets.append(value)
    if len({target_label(t) for t in targets}) != len(targets):  # one directory each
        raise ConfigError(f"--targets {text!r} lists a target twice")
    return targets


def target_label(target: float) -> str:
    """A target's directory name: ``t0.5``."""
    return f"t{target:g}"


def target_spec(base: dict[str, Any], metric: str, target: float) -> dict[str, Any]:
    """A comparison spec whose runs all have the env option ``target={metric: target}``."""
    spec = json.loads(json.dumps(base))  # a deep copy of plain data
    spec["run"]["env_kwargs"] = {**(spec["run"].get("env_kwargs") or {}), "target": {metric: target}}
    return spec


def read_protocol(out: Path) -> dict[str, Any]:
    """protocol.yaml, its shape checked: ConfigError naming what is wrong."""
    where = out / PROTOCOL_FILE
    if not where.exists():
        raise ConfigError(f"{out} holds no protocol (no {PROTOCOL_FILE})")
    saved = read_yaml_file(where, "the protocol file")
    if not isinstance(saved, dict) or set(saved) != set(PROTOCOL_KEYS):
        raise ConfigError(f"{where} must hold exactly {list(PROTOCOL_KEYS)}, got {saved!r}")
    protocol = {"targets": parse_targets(saved["targets"]), "metric": saved["metric"],
                "scratch": saved["scratch"]}
    if protocol["metric"] not in TARGET_METRICS or not isinstance(protocol["scratch"], bool):
        raise ConfigError(f"{where}: metric {protocol['metric']!r} or scratch {protocol['scratch']!r} is not valid")
    return protocol


def _check_unmixed(out: Path, configs: dict[float, dict]) -> None:
    """ConfigError when a run directory holds a run of other settings than the protocol would run."""
    mixed = [p for target, per in configs.items() for (agent, seed), config in per.items()
             if (p := config_mismatch(out / target_label(target) / run_label(agent, seed), config))]
    if mixed:
        raise ConfigError(f"{out} mixes runs of different settings: {' | '.join(mixed)}; move those run "
                          f"directories aside or start a new protocol")


# ---------------------------------------------------------------------------- one cell's fine-tune
def finetune_cell(run_dir: Path, config: dict, metric: str, target: float, scratch: bool,
                  replays: dict[str, Any], finetunes: dict[str, dict] | None = None) -> dict[str, Any]:
    """The protocol fine-tune(s) of a finished run's best valid student at or below the target, cached in
    ``<run>/protocol.json`` (reused while the best student, target, scratch setting, recipe and seed are the same). A
    run with no such student is ``missed``, with the reason. ``replays`` caches the envs students are rebuilt on;
    ``finetunes`` holds the fine-tunes done so far by :func:`finetune_key`, so a student another run chose with
    the same seed is not trained again (its report says ``reused``)."""
    finetunes = {} if finetunes is None else finetunes
    records = read_records(run_dir / "evaluations.jsonl")
    chosen = best(records, valid_only=True)
    key = {"target": {metric: target}, "index": None if chosen is None else chosen["index"],
           "arch_key": None if chosen is None else chosen.get("arch_key"), "scratch": scratch,
           "recipe": None if chosen is None else _recipe(chosen, config, replays),
           "seed": finetune_seed(config)}
    path = run_dir / CELL_FILE
    if path.exists():
        kept = json.loads(path.read_text())
        if kept.get("key") == key:
            return kept
    result = run_result(config["agent"], config["run"]["seed"], run_dir)
    cell: dict[str, Any] = {"key": key, "search_seconds": result.train_seconds if result else None,
                            "comparable": bool(result.comparable) if result else True}
    if chosen is None:
        cell["missed"] = f"no valid student at or below {metric} {target:g} x the teacher's in {len(records)} " \
                         f"evaluations"
    else:
        cell.update(_finetune_record(chosen, run_dir, config, metric, target, scratch, replays, finetunes))
    write_text_atomic(path, json.dumps(cell, indent=1, default=str))
    return cell


def _finetune_record(record: dict, run_dir: Path, config: dict, metric: str, target: float, scratch: bool,
                     replays: dict[str, Any], finetunes: dict[str, dict]) -> dict[str, Any]:
    """A record's student, checked against the target by the engine's counters, after the protocol fine-tune
    (from its inherited or submitted weights, and with ``scratch`` from re-initialised ones)."""
    import torch

    env = replay_env(record, config, replays)
    evaluator = env.unwrapped.evaluator
    student = student_of(record, env)
    over = evaluator.target_problem(student, {metric: target})
    if over is not None:
        return {"missed": f"record {record['index']}: {over}"}
    weights = None
    if record.get("weights"):
        weights = torch.load(run_dir / record["weights"], map_location="cpu", weights_only=True)
    seed = finetune_seed(config)
    reports, keys = {}, {}
    for start in STARTS if scratch else STARTS[:1]:
        submitted = weights is not None and start == "inherited"   # a run's own weights: never shared
        keys[start] = None if submitted else finetune_key(record, evaluator, student, seed, start, config)
        reports[start] = _finetune_once(evaluator, student, weights, seed, start, config, keys[start], finetunes)
    return {"index": record["index"], "search_reward": record["reward"], "search_accuracy": record.get("accuracy"),
            "reports": reports, "finetune_keys": keys}


def finetune_seed(config: dict) -> int:
    """The training seed of a run's protocol fine-tunes: the one a live env reset with the run's seed trains
    with (``CompressionEnv.reset``), so each search seed's student gets its own fine-tune seed and the spread over
    seeds includes the fine-tune's noise. A record's own ``train_seed`` would not do: on a table every record
    holds the table's one seed, so every seed's fine-tune of one student would give the same numbers."""
    from envs.base import episode_train_seed

    return episode_train_seed(int(config["run"]["seed"]))


def _finetune_once(evaluator: Any, student: Any, weights: Any, seed: int, start: str, config: dict,
                   key: str | None, finetunes: dict[str, dict]) -> dict[str, Any]:
    """One protocol fine-tune's report: the one ``finetunes`` holds under ``key`` (marked ``reused``), or a new
    training, kept there under its key."""
    if key is not None and key in finetunes:
        return {**finetunes[key], "reused": True}
    with torch_threads(int(config["run"]["threads"])):
        report = evaluator.train_protocol(student, weights, seed=seed, scratch=start == "scratch")[1]
    if key is not None:
        finetunes[key] = report
    return report


def finetune_key(record: dict, evaluator: Any, student: Any, seed: int, start: str, config: dict) -> str:
    """What determines a protocol fine-tune of a student that starts from the teacher's weights or from scratch:
    the env (its target aside: it only decides which students are allowed) and teacher file, the evaluator's
    own cache key of the student (its structure and, when it inherits, which teacher channels it kept; the
    teacher, the split, the seed), the recipe, the start, the device and the thread count. Two runs whose best
    students share this key get the same numbers (the engine is deterministic on a device at a fixed thread
    count), so the protocol trains it once."""
    recipe = evaluator.fidelity.protocol_recipe()
    inherit = "reinit" if start == "scratch" else recipe.inherit
    replay = record["replay"]
    kwargs = {k: v for k, v in replay["env_kwargs"].items() if k != "target"}
    return json.dumps([replay["env_id"], kwargs, (replay.get("teacher") or {}).get("sha256"),
                       evaluator.cache_key(student, inherit, seed), recipe.to_dict(), start,
                       int(config["run"]["threads"]), str(evaluator.device)], sort_keys=True, default=str)


def known_finetunes(out: Path) -> dict[str, dict[str, Any]]:
    """The fine-tunes the protocol's finished cells hold, by :func:`finetune_key` (a resume reuses them)."""
    known: dict[str, dict[str, Any]] = {}
    for path in sorted(out.glob(f"t*/*/{CELL_FILE}")):
        cell = json.loads(path.read_text())
        for start, key in (cell.get("finetune_keys") or {}).items():
            report = (cell.get("reports") or {}).get(start)
            if key is not None and report is not None and not report.get("reused"):
                known[key] = report
    return known


def _recipe(record: dict, config: dict, replays: dict[str, Any]) -> dict[str, Any]:
    """The protocol recipe a record's student is fine-tuned with now, by its env's fidelity (a cached
    fine-tune of another recipe, after the fidelity file changed, is redone)."""
    return replay_env(record, config, replays).unwrapped.evaluator.fidelity.protocol_recipe().to_dict()


def replay_env(record: dict, config: dict, replays: dict[str, Any]) -> Any:
    """The env a record was scored on, remade from its replay spec without the run's cache (one per spec),
    on the run's device; ConfigError when its teacher is not the recorded one."""
    from runner.validate import choose_teacher, env_key, make_replay_env, resolve_device, teacher_mismatch

    replay = record.get("replay")
    if not isinstance(replay, dict) or "env_id" not in replay:
        raise ConfigError(f"record {record.get('index')} has no replay spec: its student cannot be rebuilt")
    key = env_key(replay)
    if key not in replays:
        run = config["run"]
        with torch_threads(int(run["threads"])):
            env = make_replay_env(replay, resolve_device(None, config), run.get("data_root"), bool(run.get("download")),
                                  choose_teacher(None, config, replay), run.get("teacher_model"))
        mismatch = teacher_mismatch(env, replay)
        if mismatch:
            raise ConfigError(f"cannot fine-tune record {record['index']}: {mismatch}")
        replays[key] = env
    return replays[key]


def student_of(record: dict, env: Any) -> Any:
    """A record's student: the submitted architecture, or the student of its action on its env."""
    from netcomp.arch import arch_from_dict

    if record.get("student") is not None:
        return arch_from_dict(record["student"])
    return env.unwrapped.student_for(record["action"])


# ---------------------------------------------------------------------------- the table
def cell_figures(cell: dict[str, Any], start: str) -> dict[str, float | None]:
    """One run's figures for a row: sizes as fractions of the teacher's and their inverse ratios, the
    fine-tuned test accuracy and seconds, the search's seconds (sizes and accuracy None when it missed)."""
    report = (cell.get("reports") or {}).get(start)
    figures: dict[str, float | None] = {field: None for _, field, _ in COLUMNS}
    figures["search_seconds"] = cell.get("search_seconds")
    if cell.get("missed") or not report or not report.get("valid"):
        return figures
    figures.update(macs_fraction=report["macs"] / report["teacher_macs"],
                   params_fraction=report["params"] / report["teacher_params"],
                   speedup=report["teacher_macs"] / report["macs"],
                   compression_ratio=report["teacher_params"] / report["params"],
                   test_accuracy=report["test_accuracy"], finetune_seconds=report["seconds"])
    return figures


def protocol_rows(out: Path, protocol: dict[str, Any], spec: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (target, agent, weights): seeds, finished, missed and not comparable counts, the recipe and
    the teacher's test accuracy, and mean/std/n per column. Within a target, rows are sorted by mean test
    accuracy (rows without one last)."""
    rows = []
    for target in protocol["targets"]:
        mine = []
        for agent in spec["agents"]:
            cells = [_read_cell(out / target_label(target) / run_label(agent, seed)) for seed in spec["seeds"]]
            for start in STARTS if protocol["scratch"] else STARTS[:1]:
                mine.append(_row(target, protocol["metric"], agent, start, cells))
        rows += sorted(mine, key=lambda r: -(r["test_accuracy_mean"] if r["test_accuracy_mean"] is not None
                                             else float("-inf")))
    return rows


def _row(target: float, metric: str, agent: str, start: str, cells: list[dict | None]) -> dict[str, Any]:
    done = [c for c in cells if c is not None]
    reports = [c["reports"][start] for c in done if start in (c.get("reports") or {})]
    row: dict[str, Any] = {
        "target": target, "metric": metric, "agent": agent, "weights": start, "seeds": len(cells),
        "finished": len(done), "missed": sum(1 for c in done if cell_figures(c, start)["test_accuracy"] is None),
        "not_comparable": sum(1 for c in done if not c.get("comparable", True)),
        "recipe": reports[0]["protocol"]["name"] if reports else None,
        "teacher_test_accuracy": reports[0]["teacher_test_accuracy"] if reports else None,
    }
    for _, field, _ in COLUMNS:
        mean, std, n = mean_std([cell_figures(c, start)[field] for c in done])
        row[f"{field}_mean"], row[f"{field}_std"], row[f"{field}_n"] = mean, std, n
    return row


def row_label(row: dict[str, Any]) -> str:
    """A row's name: the agent, and ``(scratch)`` for its train-from-scratch baseline."""
    return row["agent"] if row["weights"] == "inherited" else f"{row['agent']} (scratch)"


def _read_cell(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / CELL_FILE
    return json.loads(path.read_text()) if path.exists() else None


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The protocol as a Markdown table: mean ± std over seeds (n when fewer seeds have the value); a row whose
    every seed missed the target says ``missed``."""
    head = ["target", "agent", "n", "missed", *(name for name, _, _ in COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        bad = f" (NOT COMPARABLE: {row['not_comparable']} run(s))" if row["not_comparable"] else ""
        n = row["test_accuracy_n"]
        cells = [f"{row['metric']} {row['target']:g}", row_label(row) + bad, f"{n}/{row['seeds']}",
                 f"{row['missed']}/{row['seeds']}" if row["missed"] else "-"]
        for _, field, fmt in COLUMNS:
            mean, std, count = row[f"{field}_mean"], row[f"{field}_std"], row[f"{field}_n"]
            if mean is None:
                cells.append("missed" if row["missed"] else "-")
            else:
                cells.append(f"{fmt.format(mean)} ± {fmt.format(std)}" + (f" (n={count})" if count != n else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def csv_text(rows: list[dict[str, Any]]) -> str:
    """The protocol as CSV: target, metric, agent, weights, counts, the recipe, the teacher's test accuracy,
    then mean, std and n of every column."""
    buffer = io.StringIO()
    fields = ["target", "metric", "agent", "weights", "seeds", "finished", "missed", "not_comparable", "recipe",
              "teacher_test_accuracy"] + [f"{f}_{s}" for _, f, _ in COLUMNS for s in ("mean", "std", "n")]
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_protocol(out: Path, protocol: dict[str, Any], spec: dict[str, Any]) -> list[dict[str, Any]]:
    """protocol.md, protocol.csv and curve.png of a protocol directory (atomically); the rows."""
    rows = protocol_rows(out, protocol, spec)
    run = spec["run"]
    recipe = next((r["recipe"] for r in rows if r["recipe"]), "-")
    teacher = next((r["teacher_test_accuracy"] for r in rows if r["teacher_test_accuracy"] is not None), None)
    header = (f"# Protocol: {spec['env']}\n\n{len(spec['agents'])} agents x seeds {spec['seeds']} x "
              f"{protocol['metric']} targets {', '.join(f'{t:g}' for t in protocol['targets'])} (fractions of the "
              f"teacher's), budget {run['budget']} evaluations"
              + (f" / {run['budget_seconds']} training seconds" if run.get("budget_seconds") else "")
              + f", fidelity {run['fidelity']}; every student gets the protocol fine-tune `{recipe}`. A row: each "
              f"seed's best valid student at or below the target, its test accuracy after the fine-tune (mean ± "
              f"sample std over seeds, n); speed-up = teacher MACs / student MACs, compression = teacher params / "
              f"student params; search train s: the search's training seconds; `(scratch)`: the same "
              f"architecture re-initialised and given the same fine-tune; missed: seeds with no valid student at "
              f"or below the target. Teacher test accuracy "
              f"{'-' if teacher is None else f'{teacher:.4f}'} (the same test images).{reuse_note(out)}\n\n")
    write_text_atomic(out / "protocol.md", header + markdown_table(rows) + "\n")
    write_text_atomic(out / "protocol.csv", csv_text(rows))
    write_curve(out / "curve.png", rows, teacher)
    return rows


def reuse_note(out: Path) -> str:
    """How many fine-tunes were trained and how many reused (one run's chosen student, seed and recipe being
    another's), or '' when none was reused."""
    reports = [r for path in out.glob(f"t*/*/{CELL_FILE}")
               for r in (json.loads(path.read_text()).get("reports") or {}).values()]
    reused = sum(1 for r in reports if r.get("reused"))
    return (f" {len(reports) - reused} fine-tunes were trained; {reused} more were the same computation (the same "
            f"student, train seed, recipe and start chosen by another run) and reuse its result.") if reused else ""


# ---------------------------------------------------------------------------- the plot
def write_curve(path: Path, rows: list[dict[str, Any]], teacher: float | None) -> None:
    """curve.png: test accuracy against speed-up and against compression ratio (log x), per agent a line
    through its targets with error bars (std over seeds; dashed: its scratch baseline), the teacher's test
    accuracy marked at 1x."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, x, label in ((axes[0], "speedup", "speed-up (teacher MACs / student MACs)"),
                         (axes[1], "compression_ratio", "compression ratio (teacher params / student params)")):
        colours: dict[str, Any] = {}
        for agent, weights in dict.fromkeys((r["agent"], r["weights"]) for r in rows):
            _draw(ax, [r for r in rows if (r["agent"], r["weights"]) == (agent, weights)
                       and r[f"{x}_mean"] is not None], x, colours)
        if teacher is not None:
            ax.scatter([1.0], [teacher], marker="*", s=180, c="red", label="teacher", zorder=3)
        ax.set_xscale("log", base=2)  # the protocol's targets halve: 2x, 4x, 8x
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%gx"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set(xlabel=label, ylabel="test accuracy after the protocol fine-tune")
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def _draw(ax: Any, rows: list[dict[str, Any]], x: str, colours: dict[str, Any]) -> None:
    """One agent's (or its scratch baseline's) line with error bars both ways; the scratch line takes its
    agent's colour, dashed."""
    if not rows:
        return
    rows = sorted(rows, key=lambda r: r[f"{x}_mean"])
    agent = rows[0]["agent"]
    inherited = rows[0]["weights"] == "inherited"
    style: dict[str, Any] = {"linestyle": "-" if inherited else "--", "marker": "o" if inherited else "s",
                             "fillstyle": "full" if inherited else "none"}
    if agent in colours:
        style["color"] = colours[agent]
    drawn = ax.errorbar([r[f"{x}_mean"] for r in rows], [r["test_accuracy_mean"] for r in rows],
                        xerr=[r[f"{x}_std"] for r in rows], yerr=[r["test_accuracy_std"] for r in rows],
                        capsize=3, label=row_label(rows[0]), **style)
    colours.setdefault(agent, drawn[0].get_color())
