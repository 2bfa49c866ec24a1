"""A run directory: config layering, lock, records, checkpoint, resume and the final student.

``run(args)`` is everything ``run_agent.py`` does once its flags are parsed. What survives what:

- every evaluation is one whole line of ``evaluations.jsonl``, fsynced as it finishes (a torn tail from a
  kill or a full disk is cut off and reported on the next read); every other file is written atomically
  (a temporary file, fsync, rename), so a kill leaves the old file or the new one;
- ``config.yaml`` is written before anything trains, so a run killed while its teacher trains resumes;
- the run directory is locked (``flock`` on ``lock``, released by the kernel when the process dies) while a
  run owns it: a second run on the same directory is refused with the owner's pid;
- ``--resume DIR`` restarts the agent from ``checkpoint.pt`` and replays the evaluations recorded after it
  from the cache: each replayed action must equal the recorded one (else :class:`ReplayMismatch`), so the
  finished record is exactly what an uninterrupted run writes, and no student trains twice;
- unknown config keys and resume flags that contradict the run's config are errors; a larger ``--budget``
  (or ``--budget-seconds``) extends a run on purpose; resuming a finished run says so and rebuilds any file
  that is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import errno
import fcntl
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from agents.base import FREE_LIMIT, Budget, BudgetExhausted
from netcomp.distill import torch_threads  # noqa: F401 (re-exported: the harness's thread helper)
from netcomp.errors import UserError
from netcomp.files import remove_stale_temporaries, torch_save_atomic, write_text_atomic
from runner.recorder import RunLog, best, full_fidelity, read_records
from runner.report import best_table, write_plots

#: The run settings a config may hold, with their defaults.
RUN_DEFAULTS: dict[str, Any] = {
    "budget": 20,            # reward evaluations (None with a seconds-only budget)
    "budget_seconds": None,  # training seconds (evaluations' training plus white-box agents' own)
    "fidelity": "rank",      # configs/fidelity.yaml preset (rank: the cheap one that ranks students)
    "mode": None,            # None: the agent's first supported mode
    "seed": 0,
    "device": None,          # None: cuda if available, else cpu
    "data_root": None,
    "download": False,
    "dataset_kwargs": {},    # e.g. synthetic sizes
    "env_kwargs": {},        # passed to gymnasium.make
    "teacher": None,         # a teacher checkpoint file (default: train or load the cached one); with
                             # teacher_model, that model's state dict file
    "teacher_model": None,   # MODULE:CALLABLE of your own model (the env arch "custom"; netcomp.fx_import)
    "load_policy": None,
    "trust_pickle": False,   # allow --load-policy to unpickle an SB3 zip (code can run)
    "save_best": True,       # retrain and save the best student when the agent did not
    "shared_final": False,   # give the best student the fidelity's shared final training even when the agent
                             # kept its own (a comparison's leaderboard: the same final training for all)
    "workers": None,         # Ray actors that train the students of batched asks (None: this process, no Ray)
    "ray_address": None,     # a running Ray cluster (HEAD:6379); None: a local one on this machine
    "worker_gpus": None,     # each actor's GPU share (0.25: four actors per GPU); None: 1 if the cluster has GPUs
    "export": True,          # also write the kept student as ONNX (checked with onnxruntime) and torch.export
    "threads": None,         # torch intra-op CPU threads the run trains with (None: this machine's count, then
                             # recorded, so a resume or --validate elsewhere computes the same floats)
}
#: Settings only the command line gives: a run directory (config.yaml, compare.yaml) or a --config file never
#: holds code to trust, or a network address to connect to (a shared run directory is data).
CLI_ONLY = ("trust_pickle", "workers", "ray_address", "data_root", "download", "teacher_model")
#: Env kwargs the harness sets itself (where files live, the device): a config's env_kwargs may not.
HARNESS_ENV_KWARGS = ("cache_path", "data_root", "download", "device", "teacher", "fidelity", "mode",
                      "dataset_kwargs", "render_mode", "teacher_model")
#: What each run setting must be: (types, test, expectation) for :func:`check_run_settings`.
_INT, _NUM, _STR, _MAP = (int,), (int, float), (str,), (dict,)
RUN_TYPES: dict[str, tuple[tuple[type, ...], Any, str]] = {
    "budget": (_INT, lambda v: v >= 1, "an integer >= 1 (or null with budget_seconds)"),
    "budget_seconds": (_NUM, lambda v: math.isfinite(v) and v > 0, "a number of seconds > 0 (or null)"),
    "fidelity": ((str, dict), None, "a preset name or a mapping"),
    "mode": (_STR, lambda v: v in ("oneshot", "sequential"), "oneshot or sequential (or null)"),
    "seed": (_INT, lambda v: v >= 0, "an integer >= 0"),
    "device": (_STR, None, "a device name such as cpu or cuda:0 (or null)"),
    "data_root": (_STR, None, "a folder (or null)"),
    "download": ((bool,), None, "true or false"),
    "dataset_kwargs": (_MAP, None, "a mapping"),
    "env_kwargs": (_MAP, None, "a mapping"),
    "teacher": (_STR, None, "a teacher file or 'recipe' (or null)"),
    "teacher_model": (_STR, None, "MODULE:CALLABLE (or null)"),
    "load_policy": (_STR, None, "a policy file (or null)"),
    "trust_pickle": ((bool,), None, "true or false"),
    "save_best": ((bool,), None, "true or false"),
    "shared_final": ((bool,), None, "true or false"),
    "workers": (_INT, lambda v: v >= 0, "an integer >= 0 (or null)"),
    "ray_address": (_STR, None, "HOST:PORT (or null)"),
    "worker_gpus": (_NUM, lambda v: v > 0, "a number > 0 (or null)"),
    "threads": (_INT, lambda v: v >= 1, "an integer >= 1 (or null)"),
    "export": ((bool,), None, "true or false"),
}
#: Run settings that may be null.
_NULLABLE = {"budget", "budget_seconds", "mode", "device", "data_root", "teacher", "load_policy", "workers",
             "ray_address", "worker_gpus", "threads", "teacher_model"}
DEFAULTS: dict[str, Any] = {"env": None, "agent": None, "run": RUN_DEFAULTS, "agent_config": {}}
#: Top-level keys of a --config file.
USER_KEYS = ("env", "agent", "preset", "run", "agent_config")
#: Keys the resolved config.yaml adds.
RESOLVED_KEYS = (*USER_KEYS, "mode", "env_space", "agent_source")
#: Flags that must agree with a resumed run's config (flag -> key in config["run"] or top level).
RESUME_FLAGS = {"env": "env", "agent": "agent", "fidelity": "fidelity", "seed": "seed", "mode": "mode",
                "teacher": "teacher", "load_policy": "load_policy", "threads": "threads"}
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
#: The local Ray processes a run with --workers started, so a later start can end a killed run's leftovers.
RAY_PIDS = "ray_pids.json"


class ConfigError(UserError):
    """A config or flag that cannot be run: the message names the bad value and what was expected."""


@contextlib.contextmanager
def user_input() -> Iterator[None]:
    """Where a ValueError can only come from the user's input (flags, configs, the env id, the teacher and data
    files, an agent's Config): it becomes a :class:`ConfigError` (one line, exit 2). Everywhere else a
    ValueError is a bug and keeps its traceback."""
    try:
        yield
    except UserError:
        raise
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


class RunLocked(UserError):
    """Another process owns the run directory."""


class AgentOverspent(UserError):
    """The agent asked for more evaluations than its budget had left; the run ended there, its summary written."""


class ReplayMismatch(UserError):
    """A resumed agent asked for another action than the one recorded at that index."""


# ---------------------------------------------------------------------------- configuration
def merge(base: dict, over: dict) -> dict:
    """Recursive dict merge: values in ``over`` win."""
    out = copy.deepcopy(base)
    for key, value in (over or {}).items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def check_keys(data: Any, valid: tuple[str, ...] | Any, where: str) -> None:
    """ConfigError if ``data`` is not a mapping or has keys outside ``valid``, naming both."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}")
    unknown = sorted(str(k) for k in data if k not in valid)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where}; valid keys are {sorted(valid)}")


def agent_yaml(agent: str, preset: str | None) -> dict:
    """configs/<agent>.yaml as {run, agent_config}; a named preset section is merged on top."""
    path = CONFIG_DIR / f"{agent}.yaml"
    data = yaml.safe_load(path.read_text()) if path.exists() else {}
    data = data or {}
    presets = data.pop("presets", {}) or {}
    if preset and preset not in presets:
        where = f"{path.name} has {', '.join(presets)}" if presets else f"agent {agent!r} has no presets"
        raise ConfigError(f"unknown preset {preset!r} for {agent}; {where}")
    run = data.pop("run", {}) or {}
    check_keys(run, tuple(RUN_DEFAULTS), f"{path.name} run:")
    out = {"run": run, "agent_config": data.pop("agent", data) or {}}
    if preset:
        section = presets[preset] or {}
        check_keys(section, ("run", "agent"), f"{path.name} presets: {preset}:")
        check_keys(section.get("run", {}) or {}, tuple(RUN_DEFAULTS), f"{path.name} presets: {preset}: run:")
        out = merge(out, {"run": section.get("run", {}) or {}, "agent_config": section.get("agent", {}) or {}})
    return out


def check_run_settings(run: Any, where: str) -> None:
    """ConfigError naming the first run setting of the wrong type or value (``budget: true``, ``seed: -1``)."""
    check_keys(run, tuple(RUN_DEFAULTS), where)
    owned = sorted(set(run.get("env_kwargs") or {}) & set(HARNESS_ENV_KWARGS)) \
        if isinstance(run.get("env_kwargs"), dict) else []
    if owned:
        raise ConfigError(f"{where} env_kwargs {owned} are set by the run itself (its own run settings and "
                          f"flags), never through env_kwargs")
    for key, value in run.items():
        types, test, expected = RUN_TYPES[key]
        if value is None and key in _NULLABLE:
            continue
        wrong_type = not isinstance(value, types) or (isinstance(value, bool) and bool not in types)
        if wrong_type or (test is not None and not test(value)):
            raise ConfigError(f"{where} {key}: {value!r} is not {expected}")


def check_config(config: Any, where: str) -> None:
    """ConfigError for a config of the wrong shape: top-level keys, names, run settings, agent_config."""
    check_keys(config, RESOLVED_KEYS, where)
    for key in ("env", "agent"):
        if config.get(key) is not None and not isinstance(config[key], str):
            raise ConfigError(f"{where} {key}: {config[key]!r} is not a name")
    if config.get("preset") is not None and not isinstance(config["preset"], str):
        raise ConfigError(f"{where} preset: {config['preset']!r} is not a preset name")
    if not isinstance(config.get("agent_config") or {}, dict):
        raise ConfigError(f"{where} agent_config: {config['agent_config']!r} is not a mapping of the agent's settings")
    check_run_settings(config.get("run") or {}, f"{where} run:")


def read_yaml_file(path: str | Path, what: str) -> Any:
    """A YAML file's data; ConfigError when it is missing, a folder, unreadable or not YAML."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} is {'a folder' if path.is_dir() else 'not a file'}; expected a YAML file")
    try:
        return yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what} {path} is not valid YAML: {str(exc).splitlines()[0]}") from None


def read_user_config(path: str | None) -> dict:
    """A --config file, its keys and value types checked; it may not name code or trust (see CLI_ONLY)."""
    if not path:
        return {}
    user = read_yaml_file(path, "--config") or {}
    check_keys(user, USER_KEYS, f"--config {path}")
    if user.get("agent") is not None and not isinstance(user["agent"], str):
        raise ConfigError(f"--config {path}: `agent:` is the agent's name; its settings go under `agent_config:`")
    if ":" in (user.get("agent") or ""):
        raise ConfigError(f"--config {path}: agent {user['agent']!r} names code; a user's agent is given on the "
                          f"command line only (--agent FILE.py:Class), never by a file")
    check_config({k: v for k, v in user.items() if k != "preset"}, f"--config {path}")
    if "study_storage" in (user.get("agent_config") or {}):
        raise ConfigError(f"--config {path} agent_config: study_storage can only be given on the command line "
                          f"(--study-storage): a file never names a storage to connect to")
    named = sorted(set(user.get("run") or {}) & {"trust_pickle", "ray_address", "teacher_model"})
    if named:
        raise ConfigError(f"--config {path} run: {named} can only be given on the command line (--trust-pickle, "
                          f"--ray-address, --teacher-model): a file never grants trust, names a network address or "
                          f"names code to import")
    return user


def check_out(folder: Path) -> None:
    """ConfigError when ``--out`` names a file: a run or comparison directory is a folder."""
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--out {folder} is a file; a run directory is a folder (give a new path)")


def agent_source(ref: str) -> dict[str, str] | None:
    """A user's agent reference and the SHA-256 of its source file (None for a registered agent), recorded so
    that a resume runs the same code; the file is read, not imported."""
    if ":" not in ref:
        return None
    where = ref.rpartition(":")[0]
    if where.endswith(".py"):
        path = Path(where).expanduser().resolve()
    else:
        import importlib.util

        try:
            spec = importlib.util.find_spec(where)
        except (ImportError, ValueError):
            spec = None
        path = Path(spec.origin) if spec and spec.origin else None
    if path is None or not path.is_file():
        return {"ref": ref, "sha256": None}
    return {"ref": ref, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def check_resumed_agent(config: dict, given: str | None, run_dir: Path) -> None:
    """A run of a user's agent resumes only when the command line names the same agent again, and its file is
    unchanged: what a run directory holds is data and never chooses code to import."""
    ref = config.get("agent") or ""
    if ":" not in ref:
        return
    if given != ref:
        raise ConfigError(f"{run_dir} is a run of your agent {ref!r}: resume it with --agent {ref} (a run "
                          f"directory never chooses code to run; the command line does)")
    recorded = (config.get("agent_source") or {}).get("sha256")
    now = (agent_source(ref) or {}).get("sha256")
    if recorded != now:
        raise ConfigError(f"the source of agent {ref!r} changed since the run started (SHA-256 {recorded} -> "
                          f"{now}): a resume must run the same code; restore the file or start a new run")


def resolve_config(args: argparse.Namespace) -> dict:
    """defaults < configs/<agent>.yaml (and its preset) < --config < flags."""
    config = copy.deepcopy(DEFAULTS)
    user = read_user_config(args.config)
    agent = args.agent or user.get("agent")
    if agent:
        config = merge(config, agent_yaml(agent, args.preset or user.get("preset")))
    config = merge(config, {k: v for k, v in user.items() if k != "preset"})
    config.update({k: v for k, v in {"env": args.env, "agent": args.agent}.items() if v is not None})
    for key in ("budget", "budget_seconds", "fidelity", "mode", "seed", "device", "data_root", "teacher",
                "load_policy", "workers", "ray_address", "teacher_model"):
        value = getattr(args, key, None)
        if value is not None:
            config["run"][key] = value
    if getattr(args, "threads", None) is not None:
        config["run"]["threads"] = args.threads
    if getattr(args, "image_size", None) is not None:
        config["run"]["dataset_kwargs"] = {**(config["run"].get("dataset_kwargs") or {}), "image_size": args.image_size}
    if getattr(args, "study_storage", None):
        config["agent_config"]["study_storage"] = args.study_storage
    if getattr(args, "budget_seconds", None) is not None and args.budget is None:
        config["run"]["budget"] = None  # a seconds-only budget
    if args.download:
        config["run"]["download"] = True
    if getattr(args, "trust_pickle", False):
        config["run"]["trust_pickle"] = True
    if not config.get("env") or not config.get("agent"):
        raise ConfigError("--env and --agent are required (or --resume DIR, or --list)")
    check_config({k: v for k, v in config.items() if k != "preset"}, "the run's config")
    return config


def resume_config(run_dir: Path, args: argparse.Namespace) -> tuple[dict, bool]:
    """The saved config of a run, with the resume flags checked against it; (config, budget extended)."""
    config = read_yaml_file(run_dir / "config.yaml", "the run's config") or {}
    check_config(config, f"{run_dir / 'config.yaml'}")
    for key in ("env", "agent", "env_space"):
        if not config.get(key):
            raise ConfigError(f"{run_dir / 'config.yaml'} has no {key}: it is not a whole run config")
    config = merge(DEFAULTS, config)
    if config.get("agent_source") is not None and not isinstance(config["agent_source"], dict):
        raise ConfigError(f"{run_dir / 'config.yaml'} agent_source is not a mapping")
    for key in CLI_ONLY:  # never taken from the directory: what the command line says now, or nothing
        config["run"][key] = RUN_DEFAULTS[key]
    if getattr(args, "data_root", None):
        config["run"]["data_root"] = args.data_root
    if getattr(args, "teacher_model", None):
        config["run"]["teacher_model"] = args.teacher_model
    size = getattr(args, "image_size", None)
    if size is not None and size != (config["run"].get("dataset_kwargs") or {}).get("image_size"):
        raise ConfigError(f"cannot resume {run_dir} with --image-size {size} (the run has "
                          f"{(config['run'].get('dataset_kwargs') or {}).get('image_size')})")
    config["run"]["download"] = bool(getattr(args, "download", False))
    config["run"]["trust_pickle"] = bool(getattr(args, "trust_pickle", False))
    if config["run"]["trust_pickle"] and config["run"].get("load_policy") and not getattr(args, "load_policy", None):
        raise ConfigError(f"--trust-pickle on a resume trusts the policy file config.yaml names "
                          f"({config['run']['load_policy']}): name it yourself with --load-policy PATH as well")
    config["agent_config"] = {k: v for k, v in (config.get("agent_config") or {}).items() if k != "study_storage"}
    if getattr(args, "study_storage", None):
        config["agent_config"]["study_storage"] = args.study_storage
    check_resumed_agent(config, getattr(args, "agent", None), run_dir)
    if args.config or args.preset:
        raise ConfigError("--config and --preset cannot change a run that exists; its config is "
                          f"{run_dir / 'config.yaml'}")
    conflicts = []
    for flag, key in RESUME_FLAGS.items():
        given = getattr(args, flag, None)
        saved = config.get(key) if key in ("env", "agent", "mode") else config["run"].get(key)
        if given is not None and str(given) != str(saved) and not _same_env(flag, given, saved):
            conflicts.append(f"--{flag.replace('_', '-')} {given} (the run has {saved})")
    if conflicts:
        raise ConfigError(f"cannot resume {run_dir} with different settings: {'; '.join(conflicts)}")
    extended = False
    for flag in ("budget", "budget_seconds"):
        given, saved = getattr(args, flag, None), config["run"].get(flag)
        if given is None or given == saved:
            continue
        if saved is not None and given < saved:
            raise ConfigError(f"--{flag.replace('_', '-')} {given} is below the run's {saved}: a budget can only "
                              f"grow on resume")
        config["run"][flag], extended = given, True
    for key in ("device", "workers", "ray_address"):  # where it runs may change (--workers 0: here), not what
        if getattr(args, key, None) is not None:
            config["run"][key] = getattr(args, key)
    return config, extended


def saved_config(config: dict) -> dict:
    """The config as config.yaml holds it: the command-line-only settings (trust, Ray workers and address)
    are left at their defaults, so a shared run directory never grants trust or names an address."""
    agent_config = {k: v for k, v in (config.get("agent_config") or {}).items() if k != "study_storage"}
    return {**config, "agent_config": agent_config,
            "run": {**config["run"], **{k: RUN_DEFAULTS[k] for k in CLI_ONLY}}}


def _same_env(flag: str, given: Any, saved: Any) -> bool:
    if flag != "env":
        return False
    import envs

    return envs.parse_env_id(str(given)) == envs.parse_env_id(str(saved))


# ---------------------------------------------------------------------------- the directory
@contextlib.contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold the run directory's lock (flock on ``lock``); RunLocked names the owner's pid."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            message = f"{run_dir} is in use by another run (pid {owner}); wait for it or use another --out"
            raise RunLocked(message) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
        if any((run_dir / done).exists() for done in ("summary.json", "leaderboard.md")):
            (run_dir / "lock").unlink(missing_ok=True)  # a finished directory holds no lock file
    finally:
        os.close(fd)  # releases the lock


def make_env(config: dict, run_dir: Path, space: str | None = None, pool: Any = None, **overrides: Any):
    """The environment of a run (or another space on the same teacher/data/fidelity).

    ``pool`` (a :class:`netcomp.workers.WorkerPool`) is attached to its evaluator: batched asks then train on
    the run's Ray actors.
    """
    import gymnasium as gym

    import envs

    env_id = envs.parse_env_id(config["env"])
    if space is not None:
        _, _, rest = env_id.removeprefix("netcomp/").partition(config["env_space"] + "-")
        env_id = f"netcomp/{space}-{rest}"
    run = config["run"]
    kwargs = {"fidelity": run["fidelity"], "mode": config["mode"], "device": run["device"],
              "data_root": run["data_root"], "download": run["download"],
              "dataset_kwargs": run["dataset_kwargs"], "cache_path": str(run_dir / "cache.jsonl"),
              **({"teacher": run["teacher"]} if run.get("teacher") else {}),
              **({"teacher_model": run["teacher_model"]} if run.get("teacher_model") else {}),
              **run["env_kwargs"], **overrides}
    try:
        env = gym.make(env_id, disable_env_checker=True, **kwargs)
    except TypeError as exc:  # a misspelt env_kwargs / dataset_kwargs key
        raise ConfigError(f"cannot make {env_id} with the run's env_kwargs / dataset_kwargs: {exc}") from None
    env.reset(seed=run["seed"])
    if pool is not None:
        pool.attach(env.unwrapped.evaluator)
    return env


def prepare(config: dict, log: RunLog) -> type:
    """Check the agent against the env id and budget before anything trains; the agent's class."""
    import envs
    from agents.base import check_budget_units, check_compatible, make_config
    from runner.registry import get_agent

    agent_cls = get_agent(config["agent"])
    env_id = envs.parse_env_id(config["env"])
    config["env_space"] = next(s for s in envs.SPACES if env_id.startswith(f"netcomp/{s}-"))
    config["mode"] = config["run"]["mode"] or agent_cls.modes[0]
    check_compatible(agent_cls, config["env_space"], config["mode"])
    check_budget_units(agent_cls, log.budget)
    make_config(agent_cls.Config, config["agent_config"])  # unknown agent keys fail here
    return agent_cls


def build(config: dict, run_dir: Path, log: RunLog, agent_cls: type, pool: Any = None) -> tuple[Any, Any]:
    """(recorder-wrapped env, agent) for a prepared config; this is where the teacher is trained or loaded.

    Every env of the run (the agent's ``make_env`` ones too) gets ``pool``, the run's Ray actors, if any.
    """
    from agents.base import make_config
    from runner.recorder import Recorder

    def make_other(space_name: str, mode: str = "oneshot", **kwargs: Any) -> Recorder:
        return Recorder(make_env(dict(config, mode=mode), run_dir, space=space_name, pool=pool, **kwargs), log)

    env = Recorder(make_env(config, run_dir, pool=pool), log)
    agent = agent_cls(env, make_config(agent_cls.Config, config["agent_config"]), seed=config["run"]["seed"],
                      run_dir=run_dir, make_env=make_other)
    if config["run"]["load_policy"]:
        if not agent.has_policy:
            raise ConfigError(f"agent {config['agent']!r} has no policy to load")
        agent.load_policy(config["run"]["load_policy"], trust_pickle=bool(config["run"].get("trust_pickle")))
    return env, agent


def save_checkpoint(agent: Any, run_dir: Path) -> None:
    """Agent state, the evaluation count and the seconds the agent charged, written atomically."""
    torch_save_atomic({"agent": agent.state(), "evaluations": agent.budget.used,
                       "charged_seconds": agent.budget.charged_seconds, "free_streak": agent.budget.free_streak},
                      run_dir / "checkpoint.pt")


def best_valid(records: list[dict]) -> dict | None:
    """The valid record with the highest reward (the first of equals), or None."""
    return best(records, valid_only=True)


def train_best(agent: Any, best: dict) -> tuple[Any, Any, dict]:
    """(arch, model, meta) of a record's student after the fidelity's shared final training; arch and model
    are None (and meta says why) when the agent cannot rebuild the student."""
    arch = agent.student_of(best)
    if arch is None:
        return None, None, {"index": best["index"],
                            "skipped": f"agent {agent.name!r} cannot rebuild the student of record {best['index']}"}
    base = agent.env.unwrapped
    final = base.evaluator.fidelity.final_config()
    print(f"final training of evaluation {best['index']} (reward {best['reward']:.4f}, {best['params']:,} params): "
          f"{final.epochs:g} epoch(s){f', at most {final.max_steps} steps' if final.max_steps else ''} ...",
          flush=True)
    model, report = base.evaluator.train_final(arch, seed=base.train_seed)
    print(f"final training done in {report['seconds']:.1f} s: test accuracy {report['test_accuracy']:.4f} "
          f"(teacher {report['teacher_test_accuracy']:.4f})", flush=True)
    return arch, model, {"index": best["index"], "reward": best["reward"], "search_val_accuracy": best["accuracy"],
                         **report}


def save_best_student(agent: Any, records: list[dict], run_dir: Path) -> dict | None:
    """Retrain the best valid student with the fidelity's shared final training and save weights plus its spec."""
    from netcomp.surgery import save_student

    best = best_valid(records)
    if best is None:
        return None
    arch, model, meta = train_best(agent, best)
    if arch is not None:
        save_student(run_dir / "best_student.pt", arch, model, meta)
    return meta


def shared_final(agent: Any, records: list[dict], run_dir: Path, runner_meta: dict | None) -> dict | None:
    """The best-reward student after the fidelity's shared final training (``shared_final.json``).

    The same training for every agent (:meth:`Fidelity.final_config` with no schedule of the method's own),
    so a comparison's test accuracies compare like with like. The runner's best student had exactly that
    training and is reused; a file kept from before a kill is reused when it is still the best's.
    """
    best = best_valid(records)
    if best is None:
        return None
    path = run_dir / "shared_final.json"
    if path.exists():
        kept = json.loads(path.read_text())
        if kept.get("index") == best["index"]:
            return kept
    meta = runner_meta if runner_meta and runner_meta.get("index") == best["index"] else train_best(agent, best)[2]
    write_text_atomic(path, json.dumps(meta, indent=1, default=str))
    return meta


def _trained_seconds(records: list[dict]) -> float:
    """Training seconds the records cost (a cached evaluation trained nothing)."""
    return sum(float(r.get("eval_seconds") or 0.0) for r in records if not r.get("cached"))


def replay_check(expected: list[dict], budget: Budget):
    """A record callback: a replayed evaluation must be the recorded one (same action, same student).

    The replay comes from the cache; the training seconds the recorded evaluation cost are charged again,
    so the budget ends where the uninterrupted run's did.
    """
    def check(record: dict) -> None:
        i = record["index"]
        if i < len(expected):
            old = expected[i]
            if not old.get("cached") and record.get("cached"):
                budget.eval_seconds += float(old.get("eval_seconds") or 0.0)
            if old.get("action") != record.get("action") or old.get("arch_key") != record.get("arch_key"):
                raise ReplayMismatch(
                    f"resume cannot replay evaluation {i}: the agent asked for another student than the one "
                    f"recorded ({record.get('arch_key')} vs {old.get('arch_key')}); the record is left as it was. "
                    f"Start a new run, or move evaluations.jsonl lines from {i} on aside to continue from there")
    return check


# ---------------------------------------------------------------------------- the run
def start(args: argparse.Namespace, config: dict | None = None) -> int:
    """Run (or resume) what the flags say; a directory this call created is removed if nothing was recorded.

    ``config`` (a comparison's run) replaces the config the flags would resolve to.
    """
    parent_created = False
    if args.resume:
        run_dir = Path(args.resume)
        if not run_dir.is_dir():
            raise ConfigError(f"--resume {run_dir}: no such run directory")
        if not (run_dir / "config.yaml").exists():
            raise ConfigError(f"{run_dir} holds no run (no config.yaml)")
        if args.out and Path(args.out).resolve() != run_dir.resolve():
            raise ConfigError(f"--out {args.out} with --resume {run_dir}: a resumed run stays in its directory")
        created, config = False, None
    else:
        with user_input():
            config = config if config is not None else resolve_config(args)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        label = config["agent"].rpartition(":")[2]  # a user's FILE.py:Class names the run by its class
        run_dir = Path(args.out or f"runs/{config['env']}-{label}-{stamp}")
        check_out(run_dir)
        if (run_dir / "config.yaml").exists() or (run_dir / "evaluations.jsonl").exists():
            raise ConfigError(f"{run_dir} already holds a run; use --resume {run_dir} or another --out")
        created = not run_dir.exists()
        parent_created = not run_dir.parent.exists()  # runs/ made for this run: removed with it on an error
    owned = False  # only the process that held the lock may clean up (another run may own the directory)
    try:
        with locked(run_dir):
            owned = True
            remove_stale_temporaries(run_dir)  # a killed atomic write's leftovers (the lock is ours now)
            end_stale_ray(run_dir)  # a killed driver's local Ray servers and actors
            extended = False
            if args.resume:
                with user_input():
                    config, extended = resume_config(run_dir, args)
            return execute(config, run_dir, resumed=bool(args.resume), extended=extended)
    except Exception:
        # an error (bad input, a teacher that does not fit, ...) leaves nothing behind unless something was
        # recorded; an interrupt (Ctrl-C) is a kill: what was written stays, for --resume
        if created and owned and not read_records(run_dir / "evaluations.jsonl") \
                and not (run_dir / "summary.json").exists():
            shutil.rmtree(run_dir, ignore_errors=True)
            if parent_created:
                with contextlib.suppress(OSError):  # only when empty
                    run_dir.parent.rmdir()
        raise


def _budget_of(config: dict, checkpoint: dict | None) -> Budget:
    run = config["run"]
    return Budget(None if run["budget"] is None else int(run["budget"]), run.get("budget_seconds"),
                  used=checkpoint["evaluations"] if checkpoint else 0,
                  charged_seconds=float(checkpoint.get("charged_seconds", 0.0)) if checkpoint else 0.0,
                  free_streak=int(checkpoint.get("free_streak", 0)) if checkpoint else 0)


def _missing(run_dir: Path, config: dict) -> list[str]:
    """The files a finished run should hold that are not there."""
    from runner.registry import get_agent

    names = ["summary.json", "reward.png", "accuracy_vs_params.png"]
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
    best = summary.get("best_student") or {}
    if config["run"].get("save_best") and best and "skipped" not in best:
        names.append("best_student.pt")
    if get_agent(config["agent"]).has_policy:
        names.append("policy.pt")
    if config["run"].get("shared_final") and summary.get("shared_final"):
        names.append("shared_final.json")
    return [n for n in names if not (run_dir / n).exists()]


def execute(config: dict, run_dir: Path, resumed: bool, extended: bool) -> int:
    """The run itself, in a locked directory: config first, then build, run, final student, summary.

    0 when the agent spent its budget; 2 (after the summary is written) when it asked for more than its budget.
    """
    if resumed and not extended and (run_dir / "summary.json").exists() and not _missing(run_dir, config):
        summary = json.loads((run_dir / "summary.json").read_text())
        print(f"{run_dir}: the run already finished ({summary.get('evaluations')} evaluations); nothing to do. "
              f"Pass a larger --budget to extend it.")
        return 0
    check_device(config["run"]["device"])
    on_disk = read_records(run_dir / "evaluations.jsonl")
    checkpoint = load_checkpoint(run_dir, len(on_disk)) if resumed else None
    budget = _budget_of(config, checkpoint)
    budget.eval_seconds = _trained_seconds(on_disk[: budget.used])
    if extended:
        check_extension(budget, on_disk, checkpoint)
    log = RunLog(budget, run_dir / "evaluations.jsonl", records=on_disk[: budget.used], skip_until=len(on_disk))
    log.callbacks.append(replay_check(on_disk, budget))
    with user_input():
        agent_cls = prepare(config, log)
    if extended and not agent_cls.extendable:
        raise ConfigError(f"agent {config['agent']!r} cannot extend a run: its schedule is fixed by the budget it "
                          f"started with; start a new run")
    if config["run"].get("threads") is None:  # fixed now and recorded: a resume anywhere trains the same floats
        config["run"]["threads"] = torch_threads_now()
    if ":" in config["agent"] and not resumed:
        config["agent_source"] = agent_source(config["agent"])
    write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(saved_config(config), sort_keys=False))
    with worker_pool(config["run"], run_dir) as pool, torch_threads(int(config["run"]["threads"])):
        with user_input():  # the teacher, the data and the agent's config are the user's input
            env, agent = build(config, run_dir, log, agent_cls, pool=pool)
        if checkpoint:
            agent.load_state(checkpoint["agent"])
        agent.on_checkpoint = lambda: save_checkpoint(agent, run_dir)
        teacher = print_header(config, env, budget)
        start_time = time.perf_counter()
        overspent = None
        with _progress(config, budget, log, run_dir):
            try:
                agent.run()
            except BudgetExhausted as exc:  # the agent asked for more: the run ends here, its record whole
                overspent = f"agent {config['agent']!r} asked for more than its budget ({exc}); the run ended there"
        agent.checkpoint()
        code = finish(config, run_dir, agent, log, resumed, time.perf_counter() - start_time, overspent,
                      teacher=teacher)
    return code


def print_header(config: dict, env: Any, budget: Budget) -> dict:
    """Print the run's header (its teacher's accuracy, loudly when weak, and its expected duration:
    runner/header.py) before the agent starts; the teacher's report, for summary.json."""
    from runner.header import run_header

    lines, teacher = run_header(config, env, budget)
    print("\n".join(lines), flush=True)
    return teacher


def torch_threads_now() -> int:
    """The torch intra-op thread count this process would train with."""
    import torch

    return int(torch.get_num_threads())


def check_device(device: str | None) -> None:
    """ConfigError for a device this machine does not have (``--device cuda`` without a GPU)."""
    if device is None:
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device {device!r} is not a device name; expected cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: this machine has no CUDA GPU that torch can use; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")


def load_checkpoint(run_dir: Path, recorded: int) -> dict | None:
    """The agent's checkpoint, or None to restart the agent from its start (every recorded evaluation is then
    replayed from the cache, nothing retrained): when there is none, or it counts more evaluations than the
    record holds (lines were moved aside). An empty or damaged file is a ConfigError that says what to do."""
    import pickle

    import torch

    path = run_dir / "checkpoint.pt"
    if not path.exists():
        return None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        used, charged = checkpoint["evaluations"], float(checkpoint.get("charged_seconds", 0.0))
        if not (isinstance(used, int) and not isinstance(used, bool) and used >= 0 and math.isfinite(charged)
                and charged >= 0 and isinstance(checkpoint.get("agent"), dict)):
            raise ValueError("its evaluation count, charged seconds or agent state is not what a run writes")
    except (EOFError, RuntimeError, pickle.UnpicklingError, KeyError, TypeError, ValueError, OSError,
            IndexError, AttributeError) as exc:
        raise ConfigError(f"{path} is empty or damaged ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                          f"); move it aside and --resume again: the agent then restarts from its beginning and "
                          f"replays the {recorded} recorded evaluations from the cache, retraining none") from None
    if used > recorded:
        print(f"note: {path} counts {used} evaluations but the record holds {recorded}; the agent restarts from "
              f"its beginning and replays the recorded ones from the cache")
        return None
    return checkpoint


def check_extension(budget: Budget, records: list[dict], checkpoint: dict | None) -> None:
    """A budget given on resume must be above what the run already spent (evaluations, training seconds)."""
    if budget.evaluations is not None and budget.evaluations < len(records):
        raise ConfigError(f"--budget {budget.evaluations} is below the {len(records)} evaluations the run already "
                          f"spent: a budget can only grow on resume")
    spent = _trained_seconds(records) + float((checkpoint or {}).get("charged_seconds", 0.0))
    if budget.seconds is not None and budget.seconds < spent:
        raise ConfigError(f"--budget-seconds {budget.seconds:g} is below the {spent:.1f} training seconds the run "
                          f"already spent: a budget can only grow on resume")


@contextlib.contextmanager
def worker_pool(run: dict, run_dir: Path | None = None) -> Iterator[Any]:
    """The run's Ray actors (``workers``), shut down when the run ends or fails; None (and no Ray) without."""
    if not run.get("workers"):
        yield None
        return
    from netcomp.workers import WorkerPool

    pool = WorkerPool(int(run["workers"]), run.get("ray_address"), run.get("worker_gpus"),
                      threads=int(run.get("threads") or 1))
    pids_file = Path(run_dir) / RAY_PIDS if run_dir is not None else None
    try:
        if pids_file is not None and pool.local_pids():
            write_text_atomic(pids_file, json.dumps(pool.local_pids()))
        yield pool
    finally:
        pool.shutdown()
        if pids_file is not None:
            pids_file.unlink(missing_ok=True)


def end_stale_ray(run_dir: Path) -> list[int]:
    """End the local Ray processes a killed run left (recorded in ``ray_pids.json`` by :func:`worker_pool`);
    the pids ended. Only processes that are still Ray's (their command line names ray) are signalled."""
    import signal

    path = run_dir / RAY_PIDS
    if not path.exists():
        return []
    try:
        pids = [int(p) for p in json.loads(path.read_text())]
    except (ValueError, TypeError):
        pids = []
    ended = []
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").lower()
        except OSError:
            continue  # gone already
        if b"ray" in cmdline:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                ended.append(pid)
    path.unlink(missing_ok=True)
    if ended:
        print(f"note: ended {len(ended)} Ray process(es) that a killed run left behind")
    return ended


@contextlib.contextmanager
def _progress(config: dict, budget: Budget, log: RunLog, run_dir: Path) -> Iterator[None]:
    """A progress bar and TensorBoard scalars for every new evaluation."""
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    writer = SummaryWriter(str(run_dir / "tb"))
    bar = tqdm(total=budget.evaluations, initial=budget.used, desc=f"{config['agent']} on {config['env']}",
               unit="eval", disable=None)

    start, first = time.perf_counter(), budget.used
    top = [max((float(r["reward"]) for r in log.records if full_fidelity(r)), default=-math.inf)]
    plain = bar.disable  # not a terminal (CI, nohup, a pipe, a notebook): one line per evaluation instead

    def on_evaluation(record: dict) -> None:
        writer.add_scalar("reward", record["reward"], record["index"])
        writer.add_scalar("accuracy", record["accuracy"] or 0.0, record["index"])
        writer.add_scalar("compression", record["compression"] or 0.0, record["index"])
        if full_fidelity(record):  # a lower rung's reward (ASHA) is not a candidate for the best
            top[0] = max(top[0], float(record["reward"]))  # running best: no rescan of every record
        best = top[0]
        bar.update(1)
        bar.set_postfix(best=f"{best:.4f}")
        if plain:
            print(progress_line(record, best, budget, time.perf_counter() - start, budget.used - first), flush=True)

    log.callbacks.append(on_evaluation)
    try:
        yield
    finally:
        bar.close()
        writer.close()


def progress_line(record: dict, best: float, budget: Budget, elapsed: float, done: int) -> str:
    """One evaluation's line where no progress bar shows: index of budget, reward, best so far, elapsed, ETA
    (from this session's pace; a seconds budget's ETA from its training seconds left)."""
    total = budget.evaluations
    where = f"{record['index'] + 1}/{total}" if total else f"{record['index'] + 1}"
    eta = ""
    if total and done:
        eta = f", ETA {elapsed / done * max(0, total - budget.used):.0f} s"
    elif budget.seconds is not None:
        eta = f", {max(0.0, budget.seconds - budget.train_seconds):.0f} training s left"
    valid = "" if record["valid"] else " (invalid)"
    return (f"  eval {where}: reward {record['reward']:.4f}{valid}, best {best:.4f}, "
            f"elapsed {elapsed:.0f} s{eta}")


def _student_meta(path: Path) -> dict | None:
    import torch

    blob = torch.load(path, map_location="cpu", weights_only=True)
    return blob.get("meta") if isinstance(blob, dict) else None


def table_optimum(agent: Any, config: dict) -> float | None:
    """On a tabular benchmark, the best reward of the whole table (the known optimum, for the regret), when the
    run scores with the reward the table was built with (no other reward, no target) and the table is complete
    (a partial table's best is not the optimum); else None."""
    table = getattr(agent.env.unwrapped, "table", None)
    if table is None or set(config["run"].get("env_kwargs") or {}) & {"reward", "target"} \
            or "reward" in (table.header.get("env_kwargs") or {}) \
            or not (table.header.get("build") or {}).get("complete"):
        return None
    return table.stats()["best_reward"]


def run_provenance(agent: Any, config: dict) -> dict[str, Any]:
    """Where and with what the run computed: torch, device, thread count, the CPU numerics in force, the CPU
    and the commit (a table's provenance, netcomp.tables, plus the CPU and commit). A run's scores reproduce to
    the bit only where these agree, so a run says which it had."""
    import torch

    from netcomp.tables import cpu_identity, git_commit, provenance

    device = str(getattr(agent.env.unwrapped.evaluator, "device", "cpu"))
    threads = config["run"].get("threads") or torch.get_num_threads()
    return {**provenance(device, threads), "cpu": cpu_identity(), "commit": git_commit()}


def export_best(agent: Any, run_dir: Path) -> dict | None:
    """``best_student.onnx`` and ``best_student.pt2`` of the run's kept student (netcomp.export), checked on
    real validation images; an export that fails is reported (``error``) and never loses the run. None when
    there is no kept student. Kept from an earlier try when still the same student's."""
    from netcomp.export import export_student, real_images
    from netcomp.surgery import load_student

    path = run_dir / "best_student.pt"
    if not path.exists():
        return None
    model, _, meta = load_student(path)
    done = run_dir / "exported.json"
    if done.exists() and (previous := json.loads(done.read_text())).get("index") == meta.get("index") \
            and all(Path(previous.get(k, "")).exists() for k in ("onnx", "torch_export")):
        return previous
    try:
        report = {"index": meta.get("index"),
                  **export_student(model, real_images(agent.env.unwrapped.evaluator.dataset), run_dir)}
    except Exception as exc:  # an exporter's limit is not the run's failure: say so and keep going
        report = {"index": meta.get("index"), "error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
        print(f"warning: could not export the best student: {report['error']}")
    write_text_atomic(done, json.dumps(report, indent=1))
    return report


def accounting_problems(config: dict, log: RunLog) -> list[str]:
    """Why this run's figures cannot be compared with others': students trained outside the recorder (through
    ``env.unwrapped`` or the evaluator), or a budget the agent edited. Counted over this process's work: the
    evaluators' trainings and seconds against the records this process trained."""
    budget, problems = log.budget, []
    mine = [r for r in log.records[log.session_start:] if not r.get("cached")
            and float(r.get("eval_seconds") or 0.0) > 0.0]
    trained = sum(ev.trainings for ev in log.evaluators)
    if trained != len(mine):
        problems.append(f"the evaluator trained {trained} students but the record holds {len(mine)} trained "
                        f"evaluations: students were trained outside the recorder")
    seconds = sum(ev.trained_seconds for ev in log.evaluators)
    recorded = sum(float(r["eval_seconds"]) for r in mine)
    if abs(seconds - recorded) > 1e-6 * max(1.0, seconds):
        problems.append(f"the evaluator trained for {seconds:.3f} s but the records account for {recorded:.3f} s")
    run = config["run"]
    if budget.evaluations != (None if run["budget"] is None else int(run["budget"])) or (
            budget.seconds != (None if run["budget_seconds"] is None else float(run["budget_seconds"]))):
        problems.append(f"the budget was changed during the run (now {budget.evaluations} evaluations / "
                        f"{budget.seconds} s; the config says {run['budget']} / {run['budget_seconds']})")
    if budget.used != len(log.records):
        problems.append(f"the budget counts {budget.used} evaluations but {len(log.records)} were recorded")
    return problems


def finish(config: dict, run_dir: Path, agent: Any, log: RunLog, resumed: bool, seconds: float,
           overspent: str | None = None, teacher: dict | None = None) -> int:
    """The final student, plots, policy and summary (summary last: its presence means the run finished).

    A run whose accounting does not add up (:func:`accounting_problems`) is marked ``comparable: false`` with
    the reasons, and a comparison's leaderboard says so. 2 when the agent overspent (after the summary), else 0.
    ``teacher`` (the header's report of the teacher) goes into the summary; its weak-teacher warning is repeated.
    """
    budget = log.budget
    problems = accounting_problems(config, log)
    records = read_records(run_dir / "evaluations.jsonl")
    best_meta = agent.notes.get("final")
    full = [r for r in records if full_fidelity(r)]  # not a multi-fidelity agent's lower rungs
    best_index = best_valid(records)["index"] if any(r["valid"] for r in full) else None
    if best_meta is None and (run_dir / "best_student.pt").exists():  # saved before a kill: keep it if still best
        best_meta = _student_meta(run_dir / "best_student.pt")
        if (best_meta or {}).get("index") != best_index:
            best_meta = None
    runner_meta = None
    if (best_meta is None or not (run_dir / "best_student.pt").exists()) and config["run"]["save_best"]:
        runner_meta = save_best_student(agent, records, run_dir)
        best_meta = runner_meta or best_meta
    shared = shared_final(agent, records, run_dir, runner_meta) if config["run"].get("shared_final") else None
    exported = export_best(agent, run_dir) if config["run"].get("export", True) else None
    write_plots(full, run_dir)
    if agent.has_policy:  # the policy as it ends (after an extension too)
        agent.save_policy(run_dir / "policy.pt")
    previous = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
    problems = list(dict.fromkeys([*(previous.get("not_comparable") or []), *problems]))  # kept across resumes
    summary = {
        "env": config["env"], "agent": config["agent"], "budget": budget.evaluations,
        "budget_seconds": budget.seconds, "evaluations": len(records),
        "trained": sum(1 for r in records if not r.get("cached")), "eval_seconds": budget.eval_seconds,
        "charged_seconds": budget.charged_seconds, "wall_seconds": seconds, "resumed": resumed,
        "threads": config["run"].get("threads"),
        "comparable": not problems, "not_comparable": problems, "overspent": overspent,
        "stalled": budget.stalled,
        "best": best(records), "best_student": best_meta,
        "shared_final": shared, "exported": exported, "table_optimum": table_optimum(agent, config),
        "notes": {k: v for k, v in agent.notes.items() if k != "final"},
        "teacher": teacher,  # its test/validation accuracy, recipe, file and any weak-teacher warning
        "provenance": run_provenance(agent, config),
    }
    write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=1, default=str))
    print(f"\nBest students ({len(records)} evaluations, run directory {run_dir}):")
    print(best_table(full))
    if best_meta:
        print("\nbest student:", json.dumps({k: v for k, v in best_meta.items() if k != "arch"}, default=str))
    for problem in problems:
        print(f"warning: this run is not comparable: {problem}")
    if (teacher or {}).get("warning"):
        print(f"WARNING: {teacher['warning']}")
    if budget.stalled:
        print(f"warning: the run stopped after {FREE_LIMIT} evaluations in a row that cost no training seconds "
              f"(all over the target, invalid or cached): its seconds budget would never have been spent")
    if overspent:
        raise AgentOverspent(overspent)
    return 0
