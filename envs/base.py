"""The base environment: teacher, data, fidelity, reward, evaluation, cache, episode info and rendering.

Subclasses (one per action space) only say what an action is and how it turns the teacher into a student:
``_layers`` (the layer names actions refer to), ``_oneshot_space`` / ``_step_space``, ``_features`` (the
static per-layer features), ``_check_oneshot`` / ``_check_step`` (validation into plain values) and
``_make_student`` (values for all layers -> student Arch plus info). Everything else lives here, so every
space has the same episode contract (the final ``info`` keys and the invalid-student penalty, documented on
:class:`CompressionEnv` below).
"""

from __future__ import annotations

import functools
import multiprocessing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from netcomp.arch import Arch
from netcomp.data import DATASETS, Dataset, load_dataset
from netcomp.evaluator import Evaluator, Fidelity, check_target, load_fidelity
from netcomp.fx_import import CUSTOM_ARCH, custom_teacher
from netcomp.metrics import count_macs, count_params
from netcomp.rewards import REWARDS, TARGET_REWARD, RewardContext, check_reward_name, invalid_penalty
from netcomp.teachers import Teacher, get_teacher, load_teacher
from netcomp.zoo import ARCHS

MODES = ("oneshot", "sequential")
OBS_BOUND = 10.0
#: Columns of the running context appended to the layer features in sequential mode.
CONTEXT_FEATURES = ("position", "reduced", "previous_action")


@functools.lru_cache(maxsize=8)
def _cached_dataset(name: str, root: str | None, download: bool, kwargs: tuple) -> Dataset:
    """Datasets are read once per process (checkers and vector envs build the env many times)."""
    return load_dataset(name, root=root, download=download, **dict(kwargs))


_TEACHERS: dict[tuple, Teacher] = {}
#: ``teacher=`` value that asks for the fidelity recipe's cached teacher even where one is shipped.
RECIPE_TEACHER = "recipe"


def _shipped(arch: str, dataset: Dataset) -> Teacher | None:
    """The shipped teacher of (arch, data), read and checksummed once per process (None if none is shipped)."""
    from netcomp.teachers import data_fingerprint, shipped_teacher

    key = ("shipped", arch, dataset.name, data_fingerprint(dataset))
    if key not in _TEACHERS:
        _TEACHERS[key] = shipped_teacher(arch, dataset)
    return _TEACHERS[key]


def _cached_teacher(arch: str, dataset: Dataset, recipe: str, seed: int, home: str | None,
                    device: str | torch.device = "cpu") -> Teacher:
    """Teachers are trained (or read from disk) once per process, on the env's ``device`` (a GPU recipe's
    teacher trains there in minutes; on the CPU a recipe of hours is warned about first).

    Keyed by the data fingerprint (shape, classes, split sizes, first images), as the cache file is, so two
    datasets of equal size but another image size or other images never share a teacher.
    """
    from netcomp.teachers import data_fingerprint

    key = (arch, dataset.name, data_fingerprint(dataset), recipe, seed, home)
    if key not in _TEACHERS:
        _TEACHERS[key] = get_teacher(arch, dataset, recipe=recipe, seed=seed, device=device,
                                     home=Path(home) if home else None, progress=False)
    return _TEACHERS[key]



def episode_train_seed(seed: int) -> int:
    """The training seed of the students of an episode reset with ``seed``: the first draw of gymnasium's
    generator seeded with it. Cache keys include it; the operating-point protocol fine-tunes a run's students
    with the one its seed gives (``runner.protocol.finetune_seed``)."""
    rng, _ = gym.utils.seeding.np_random(int(seed))
    return int(rng.integers(2**31 - 1))


class CompressionEnv(gym.Env):
    """Common machinery of the compression environments; see the subclasses for their spaces.

    Episode contract: the final step's ``info`` holds ``valid``, ``accuracy``, ``teacher_accuracy``,
    ``params``, ``teacher_params``, ``macs``, ``teacher_macs``, ``compression`` (1 - params ratio),
    ``reward``, ``arch_key``, ``eval_seconds`` (the seconds the student's training took, also when the
    result came from the cache, so seeded steps give equal infos), ``invalid_reason`` (when not valid) and
    the space's own fields; ``env.unwrapped.last_result.cached`` says whether it was trained now.
    Invalid students end the episode with the ``penalty`` reward; they never raise. The penalty lies below
    every valid student's reward under the env's reward (default: the reward's floor - 1, see
    :mod:`netcomp.rewards`; an explicit ``penalty`` at or above the floor is a ValueError).

    ``target`` (an operating point, e.g. ``{"macs": 0.5}`` or ``{"params": 0.25}``: fractions of the teacher's)
    makes a student above it invalid before anything trains (zero training seconds, a reason starting with
    "over target"); without an explicit ``reward`` the reward is then the validation accuracy (``accuracy``).

    ``teacher_model`` (with the arch ``custom``: ``netcomp/SPACE-custom-DATASET-v0``) makes your own network the
    teacher: an ``nn.Module``, a callable returning one, or its ``"MODULE:CALLABLE"`` reference (e.g.
    ``"torchvision.models:resnet18"``, called with ``num_classes=`` when it takes it), read into the IR by
    :mod:`netcomp.fx_import`; ``teacher`` is then its state dict file (without one the teacher is untrained).
    """

    metadata: ClassVar[dict] = {"render_modes": ["ansi"], "render_fps": 1}
    space: ClassVar[str] = ""
    default_reward: ClassVar[str] = "n2n"
    default_inherit: ClassVar[str] = "reinit"
    #: the modes this space offers (the edit space is one-shot only)
    modes: ClassVar[tuple[str, ...]] = MODES
    #: whether inherited BatchNorms keep the teacher's running statistics (ESNAC's edit space: fresh ones)
    copy_bn_stats: bool = True
    #: what scores the students (a table env's looks them up: envs/table.py, netcomp.tables.TableEvaluator)
    evaluator_class: Any = Evaluator

    def __init__(self, arch: str = "resnet20", dataset: str = "synthetic", fidelity: str | Mapping = "smoke",
                 mode: str = "oneshot", reward: str | None = None, device: str | None = None,
                 data_root: str | None = None, teacher: str | Teacher | None = None, render_mode: str | None = None,
                 penalty: float | None = None, inherit: str | None = None, cache_path: str | None = None,
                 download: bool = False, dataset_kwargs: Mapping | None = None, teacher_seed: int = 0,
                 home: str | None = None, require_smaller: bool = True, reward_split: str = "val",
                 target: Mapping[str, float] | None = None, teacher_model: Any = None) -> None:
        _check_choice("arch", arch, (*ARCHS, CUSTOM_ARCH))
        _check_choice("dataset", dataset, DATASETS)
        _check_choice("mode", mode, self.modes)
        if render_mode is not None:
            _check_choice("render_mode", render_mode, tuple(self.metadata["render_modes"]))
        self.mode, self.render_mode = mode, render_mode
        self.target = check_target(target)
        self._within_target: dict[bytes, bool] = {}  # discrete one-shot action -> within the target
        default = TARGET_REWARD if self.target else self.default_reward
        self.reward_name = check_reward_name(reward or default)  # validates the name early
        self.fidelity: Fidelity = load_fidelity(fidelity, self.space)
        self.device = torch.device(device or default_device())
        ds = _cached_dataset(dataset, data_root, download, tuple(sorted(
            (k, tuple(v) if isinstance(v, list) else v) for k, v in (dataset_kwargs or {}).items())))
        if arch == CUSTOM_ARCH or teacher_model is not None:  # your own model (netcomp.fx_import)
            self.teacher = custom_teacher(arch, teacher_model, teacher, ds, teacher_seed)
        else:
            self.teacher = self._resolve_teacher(teacher, arch, ds, teacher_seed, home)
        self.arch: Arch = self.teacher.arch
        self.evaluator = self.evaluator_class(self.teacher, ds, self.fidelity, device=self.device,
                                   inherit=inherit or self.fidelity.inherit or self.default_inherit,
                                   cache_path=cache_path,
                                   min_linear_inputs=self._min_linear_inputs(), require_smaller=require_smaller,
                                   split=reward_split, size_metrics=REWARDS[self.reward_name].size_metrics,
                                   inherit_bn_stats=self.copy_bn_stats, target=self.target)
        ev = self.evaluator
        self.reward_context = RewardContext(ev.teacher_accuracy, ev.teacher_params, ev.teacher_macs,
                                            self.arch.num_classes, ev.max_growth)
        self.penalty = invalid_penalty(self.reward_name, self.reward_context, penalty)
        self.train_seed = 0
        self.layers: tuple[str, ...] = self._layers()
        self._static = self._features().astype(np.float32)
        if self.mode == "oneshot":
            self.action_space = self._oneshot_space()
            obs_shape = self._static.shape
        else:
            self.action_space = self._step_space()
            obs_shape = (self._static.shape[1] + len(CONTEXT_FEATURES),)
        # features are scaled by fixed constants and clipped, so a finite box holds every observation
        self.observation_space = spaces.Box(-OBS_BOUND, OBS_BOUND, obs_shape, np.float32)
        self._t = 0
        self._values: list[Any] = []
        self._reduced = self._previous = 0.0
        self._last_info: dict[str, Any] = {}
        self._last_student: Arch | None = None

    # ------------------------------------------------------------------ hooks for the spaces
    def _layers(self) -> tuple[str, ...]:
        raise NotImplementedError

    def _features(self) -> np.ndarray:
        raise NotImplementedError

    def _oneshot_space(self) -> spaces.Space:
        raise NotImplementedError

    def _step_space(self) -> spaces.Space:
        raise NotImplementedError

    def _check_oneshot(self, action: Any) -> list[Any]:
        """Validate a one-shot action; return one plain value per layer."""
        raise NotImplementedError

    def _check_step(self, action: Any) -> Any:
        """Validate a sequential action; return the plain value for the current layer."""
        raise NotImplementedError

    def _make_student(self, values: list[Any]) -> tuple[Arch, dict[str, Any]]:
        """The student for per-layer values, and the space's info fields (forced, corrected, ...)."""
        raise NotImplementedError

    def _min_linear_inputs(self) -> int:
        return 1

    def _step_value(self, value: Any, t: int) -> tuple[Any, float]:
        """A sequential step's value after any correction (budget wall), and its 'reduced' context."""
        return value, 0.0

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        if seed is not None:  # student training follows the episode seed (cache keys include it)
            self.train_seed = episode_train_seed(seed)
        self._t, self._values, self._reduced, self._previous = 0, [], 0.0, 0.0
        return self._observation(), {"layers": len(self.layers), "teacher_accuracy": self.evaluator.teacher_accuracy}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self.mode == "oneshot":
            self._values = self._check_oneshot(action)
            return self._finish()
        if self._t >= len(self.layers):
            raise RuntimeError("episode is over; call reset()")
        value = self._check_step(action)
        value, self._reduced = self._step_value(value, self._t)
        self._values.append(value)
        self._previous = float(np.asarray(value, dtype=np.float64).mean())
        self._t += 1
        if self._t < len(self.layers):
            return self._observation(), 0.0, False, False, {}
        return self._finish()

    def _finish(self) -> tuple[np.ndarray, float, bool, bool, dict]:
        student, space_info = self._make_student(self._values)
        info = self._score([student], [space_info])[0]
        obs = self._observation() if self.mode == "oneshot" else np.zeros(self.observation_space.shape, np.float32)
        return obs, info["reward"], True, False, info

    def _score(self, students: Sequence[Arch], space_infos: Sequence[Mapping[str, Any]],
               steps: int | None = None) -> list[dict[str, Any]]:
        """Evaluate students together (shared batches) and return their episode infos, in order; ``steps``: at
        that rung of the fidelity (see :meth:`evaluate_many`)."""
        rung = None if steps is None else self.fidelity.at_steps(steps)
        results = self.evaluator.evaluate_many(list(students), seed=self.train_seed, fidelity=rung)
        infos = [self.episode_info(r, si) for r, si in zip(results, space_infos)]
        self._remember(students[-1], results, infos[-1])
        return infos

    def _remember(self, student: Arch, results: list, info: dict[str, Any]) -> None:
        """The last scored student, its result(s) and info (``student``, ``last_result``, render)."""
        self._last_student, self.last_result, self._last_info = student, results[-1], info
        self.last_results = results

    def evaluate_many(self, actions: Sequence[Any], steps: int | None = None) -> list[dict[str, Any]]:
        """Score several whole-episode actions at once: one info per action, as the final step would give.

        A one-shot action each, or in sequential mode the list of one episode's step actions. The uncached
        students are trained together on shared batches (each exactly as it would be alone: the same seed,
        the same batches), so this is the cheap way to score a population. The current episode is abandoned.

        ``steps`` scores them at a lower rung of the fidelity: its KD run cut to that many optimiser steps
        (``evaluator.full_steps`` is the fidelity's own), for multi-fidelity agents (ASHA); the reward is
        then the rung's, not comparable with the fidelity's, and the recorder marks such evaluations.
        """
        built = [self._student_of(action) for action in actions]
        if not built:
            return []
        return self._score([b[0] for b in built], [b[1] for b in built], steps)

    def score_student(self, student: Arch, weights: Mapping[str, torch.Tensor] | None = None,
                      train: bool = True) -> dict[str, Any]:
        """Score a finished student (a white-box agent's result) exactly like an episode's: the same checks,
        reward and info contract, plus ``submitted=True``.

        Without ``weights`` the student is built, inherits and is distilled as the env's students are; with
        ``weights`` (a state dict of the student's module) it starts from them and is distilled at the
        fidelity (``train=True``) or only evaluated (``train=False``).
        """
        from netcomp.evaluator import refused_result

        problem = self.evaluator.submission_problem(student, weights)
        if problem is not None:  # not a student of this teacher and data: invalid, with the reason
            result = refused_result(student, problem)
        elif weights is None:
            result = self.evaluator.evaluate(student, seed=self.train_seed)
        else:
            result = self.evaluator.evaluate_weights(student, weights, train=train, seed=self.train_seed)
        info = self.episode_info(result, {"submitted": True, "trained": weights is None or bool(train)})
        self._remember(student, [result], info)
        return info

    def episode_info(self, result, space_info: Mapping[str, Any]) -> dict[str, Any]:
        """The contract info of an evaluated student plus the space's own fields.

        A student the reward cannot be paid to (a budget not met, a diverged loss) is invalid, with the
        reason; every invalid student gets ``self.penalty``, below every valid reward.
        """
        ev = self.evaluator
        compression = 1.0 - result.params / ev.teacher_params if result.params else 0.0
        info = {
            "valid": result.valid, "accuracy": result.accuracy, "teacher_accuracy": ev.teacher_accuracy,
            "loss": result.loss if np.isfinite(result.loss) else None,
            "params": result.params, "teacher_params": ev.teacher_params,
            "macs": result.macs, "teacher_macs": ev.teacher_macs, "compression": compression,
            "arch_key": result.arch_key, "eval_seconds": result.eval_seconds,
            **space_info,
        }
        if not result.valid:
            info["invalid_reason"] = result.invalid_reason
        reward = REWARDS[self.reward_name]
        scoring = {**info, "max_loss": self.reward_context.max_loss}
        value = reward.value(scoring) if info["valid"] else None
        if info["valid"] and value is None:  # the reward cannot be paid: an invalid episode, with the reason
            info["valid"], info["invalid_reason"] = False, reward.problem(scoring)
        info["reward"] = self.penalty if value is None else float(value)
        return info

    def episode_state(self) -> dict[str, Any]:
        """The progress of the current (sequential) episode as plain data, for a policy's checkpoint."""
        return {"t": self._t, "values": _plain(self._values), "reduced": float(self._reduced),
                "previous": float(self._previous), "train_seed": int(self.train_seed)}

    def load_episode_state(self, state: Mapping[str, Any]) -> None:
        """Continue the episode saved by :meth:`episode_state` (after a reset)."""
        self._t, self._values = int(state["t"]), list(state["values"])
        self._reduced, self._previous = float(state["reduced"]), float(state["previous"])
        self.train_seed = int(state["train_seed"])

    def _observation(self) -> np.ndarray:
        if self.mode == "oneshot":
            return np.clip(self._static, -OBS_BOUND, OBS_BOUND)
        t = min(self._t, len(self.layers) - 1)
        position = t / max(1, len(self.layers) - 1)
        context = np.array([position, self._reduced, self._previous], np.float32)
        return np.clip(np.concatenate([self._static[t], context]), -OBS_BOUND, OBS_BOUND).astype(np.float32)

    def render(self) -> str | None:
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; make the env with render_mode='ansi'")
            return None
        return self._render_table()

    def _render_table(self) -> str:
        student = self._last_student
        lines = [f"{self.space} env on {self.arch.family} ({self.mode}); teacher acc "
                 f"{self.evaluator.teacher_accuracy:.4f}, {self.evaluator.teacher_params:,} params"]
        lines.append(f"{'layer':<28} {'op':<7} {'teacher':>8} {'student':>8}")
        for name in self.arch.layers:
            node = self.arch.node(name)
            width = self.arch.shapes[name][0]
            if student is None:
                now = "-"
            elif name not in student.index:
                now = "removed"
            else:
                now = str(student.shapes[name][0]) if student.shapes else "?"
            lines.append(f"{name:<28} {node.op:<7} {width:>8} {now:>8}")
        if self._last_info:
            i = self._last_info
            lines.append(f"params {i['params']:,}/{i['teacher_params']:,}  MACs {i['macs']:,}/{i['teacher_macs']:,}  "
                         f"acc {i['accuracy']:.4f}  reward {i['reward']:.4f}  valid {i['valid']}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ helpers
    def _resolve_teacher(self, teacher: str | Teacher | None, arch: str, ds: Dataset, seed: int,
                         home: str | None) -> Teacher:
        """The env's teacher: a Teacher or a teacher file (checked to fit ``arch`` and ``ds``: ValueError
        naming the mismatching field otherwise); by default the teacher shipped in teachers/ for this arch and
        data (checksum verified) when there is one for ``seed``, else the cached teacher of the fidelity's recipe;
        ``teacher="recipe"`` asks for the recipe's teacher even where one is shipped."""
        from netcomp.teachers import check_teacher_fits

        if isinstance(teacher, Teacher):
            check_teacher_fits(teacher, arch, ds)
            return teacher
        if teacher is None:
            shipped = _shipped(arch, ds)
            if shipped is not None and shipped.meta.get("seed") == seed:
                return shipped
        elif isinstance(teacher, str | Path) and str(teacher) != RECIPE_TEACHER:
            loaded = load_teacher(Path(teacher))
            check_teacher_fits(loaded, arch, ds)
            return loaded
        return _cached_teacher(arch, ds, self.fidelity.teacher_recipe, seed, home, self.device)

    def student_for(self, action: Any) -> Arch:
        """The student that a one-shot action, or the list of a sequential episode's actions, yields.

        Nothing is trained; the current episode is abandoned (call reset() before stepping again).
        """
        return self._student_of(action)[0]

    def _student_of(self, action: Any) -> tuple[Arch, dict[str, Any]]:
        """(student, space info) of a one-shot action or of the list of a sequential episode's actions."""
        if self.mode == "oneshot":
            return self._make_student(self._check_oneshot(action))
        if len(action) != len(self.layers):
            raise ValueError(f"a sequential episode has {len(self.layers)} actions, got {len(action)}")
        self._values = []
        for t, a in enumerate(action):
            value, self._reduced = self._step_value(self._check_step(a), t)
            self._values.append(value)
        self._t = len(self.layers)
        return self._make_student(self._values)

    def within_target(self, action: Any) -> bool:
        """Whether a one-shot action's student is at or below the env's ``target`` (True without one), told
        before anything trains (no evaluation is spent). The current episode may be abandoned. On a discrete action
        space the answer is remembered per action (the target and an action's student do not change), so a
        search that checks many repeated candidates (ESNAC: 1,000 per kernel) builds each student once."""
        if self.target is None:
            return True
        key = discrete_action_key(self.action_space, action) if self.mode == "oneshot" else None
        if key in self._within_target:
            return self._within_target[key]
        known = self.evaluator.target_problem(self.student_for(action)) is None
        if key is not None:
            self._within_target[key] = known
        return known

    def sample_action(self, rng: np.random.Generator | None = None) -> Any:
        """A random one-shot action from this space's sampler: uniform over the action space here (the edit
        space overrides it with ESNAC's sampler). ``rng`` defaults to the action space's own generator."""
        space = self.action_space
        if rng is None:
            return space.sample()
        if isinstance(space, spaces.Box):
            return rng.uniform(space.low, space.high).astype(space.dtype)
        if isinstance(space, spaces.MultiBinary):
            return rng.integers(0, 2, space.shape).astype(space.dtype)
        if isinstance(space, spaces.MultiDiscrete):
            return rng.integers(0, space.nvec).astype(space.dtype)
        if isinstance(space, spaces.Discrete):
            return int(space.start + rng.integers(space.n))
        raise TypeError(f"no sampler for {space}")

    @property
    def student(self) -> Arch | None:
        """The last episode's student architecture."""
        return self._last_student

    def student_cost(self, student: Arch) -> tuple[int, int]:
        """(params, MACs) of a student."""
        return count_params(student), count_macs(student)


def default_device() -> str:
    """The device an env uses when none is given: CPU without CUDA; with several GPUs, one per worker.

    Vector-env workers (gymnasium's AsyncVectorEnv, SB3's SubprocVecEnv) are child processes numbered
    1, 2, ... by multiprocessing; worker k takes GPU (k - 1) mod n, so n workers spread over n GPUs.
    The main process takes GPU 0.
    """
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        return "cpu"
    identity = multiprocessing.current_process()._identity
    return f"cuda:{(identity[0] - 1) % count}" if identity else "cuda:0"


def _plain(value: Any) -> Any:
    """Numbers, tuples and arrays as plain Python lists and scalars (weights_only-safe)."""
    if isinstance(value, np.ndarray | list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _check_choice(what: str, value: Any, valid: tuple) -> None:
    if value not in valid:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(map(str, valid))}")


def discrete_action_key(space: spaces.Space, action: Any) -> bytes | None:
    """An action's identity on a discrete action space (its integers, whatever their dtype); None on a
    continuous one, where actions do not repeat."""
    if isinstance(space, (spaces.MultiBinary, spaces.MultiDiscrete, spaces.Discrete)):
        return np.asarray(action, np.int64).tobytes()
    return None


def check_box_action(action: Any, space: spaces.Box) -> np.ndarray:
    """A Box action as float64 array, or ValueError naming the expected space."""
    arr = _as_array(action, space)
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"action dtype {arr.dtype} is not numeric; expected {space}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"action has NaN or inf; expected finite values in {space}")
    if np.any(arr < space.low - 1e-6) or np.any(arr > space.high + 1e-6):
        raise ValueError(f"action out of range [{space.low.min()}, {space.high.max()}]; expected {space}")
    return np.clip(arr, space.low, space.high)


def check_int_action(action: Any, space: spaces.Space, high: np.ndarray | int) -> np.ndarray:
    """A Discrete / MultiDiscrete / MultiBinary action as int64 array, or ValueError naming the space."""
    arr = _as_array(action, space)
    if arr.dtype == bool:
        arr = arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"action dtype {arr.dtype} is not numeric; expected {space}")
    if np.issubdtype(arr.dtype, np.floating) and not (np.all(np.isfinite(arr)) and np.all(arr == np.round(arr))):
        raise ValueError(f"action must hold integers; expected {space}")
    arr = arr.astype(np.int64)
    if np.any(arr < 0) or np.any(arr >= high):
        raise ValueError(f"action out of range; expected {space}")
    return arr


def _as_array(action: Any, space: spaces.Space) -> np.ndarray:
    try:
        arr = np.asarray(action)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"action {action!r} is not an array; expected {space}") from exc
    shape = space.shape if space.shape is not None else ()
    if arr.dtype == object:
        raise ValueError(f"action of object dtype; expected {space}")
    if arr.shape != shape:
        if arr.size == int(np.prod(shape)) and arr.ndim <= 1 and len(shape) <= 1:
            arr = arr.reshape(shape)
        else:
            raise ValueError(f"action has shape {arr.shape}; expected shape {shape} for {space}")
    return arr
