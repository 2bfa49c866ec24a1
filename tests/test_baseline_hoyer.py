"""The DeepHoyer agent: exact physical shrinking, the regularise/prune/fine-tune pipeline, records, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from agents.base import Budget
from baselines.hoyer import HoyerAgent, HoyerConfig, alive_macs, dead_channels, shrink, train_phase, weight_tensors
from envs.channel_ratio import ChannelRatioEnv
from netcomp.arch import Arch, arch_from_dict
from netcomp.distill import TrainConfig, evaluate
from netcomp.metrics import GroupCostModel, count_macs, count_params
from netcomp.sparsity import penalty
from netcomp.surgery import build_module, load_student
from netcomp.zoo import build_arch
from runner.recorder import Recorder, RunLog, read_records
from tests.conftest import cli

#: A threshold that kills some, not all, channels of the smoke teacher's groups after a smoke run.
PARTIAL = {"threshold": 0.07, "decays": [1e-3, 1e-2]}


pytestmark = pytest.mark.usefixtures("one_thread")


def consumers(arch: Arch, gid: str) -> list[tuple[str, int]]:
    """(layer, features per channel) of every conv/linear reading group ``gid`` (through a flatten too)."""
    members = set(arch.group(gid).members)
    out = []
    for node in arch.nodes:
        if node.name in members or not any(i in members for i in node.inputs):
            continue
        if node.op == "flatten":
            c, h, w = arch.shapes[node.inputs[0]]
            out += [(name, h * w) for name in arch.consumers[node.name]]
        else:
            out.append((node.name, 1))
    return out


@torch.no_grad()
def kill(model, arch: Arch, gid: str, channels: list[int], filters: bool = True, inputs: bool = True) -> None:
    """Zero the filters (every producer) and/or the input slices (every consumer) of some channels."""
    for c in channels:
        if filters:
            for name in arch.group(gid).producers:
                model.get_submodule(name).weight[c] = 0.0
        if inputs:
            for name, hw in consumers(arch, gid):
                model.get_submodule(name).weight[:, c * hw:(c + 1) * hw] = 0.0


def random_model(arch: Arch, seed: int = 0):
    """A module with random weights and non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    model = build_module(arch)
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


def check_exact(arch: Arch, model, expected: dict[str, list[int]], size: int, channels: int = 3) -> None:
    """shrink() removes exactly ``expected``, computes the masked model's outputs, has the implied params."""
    student, module, removed = shrink(model, arch, "both")
    assert removed == {gid: len(c) for gid, c in expected.items()}
    x = torch.randn(4, channels, size, size)
    with torch.no_grad():
        assert torch.allclose(module(x), model(x), atol=1e-5, rtol=1e-4)
    cost = GroupCostModel(arch)
    widths = {gid: arch.group(gid).width - len(c) for gid, c in expected.items()}
    assert count_params(student) == cost.params(widths) == sum(p.numel() for p in module.parameters())


def test_structural_student_equals_masked_resnet_and_has_the_implied_params():
    """Dead channels of a plain group and of a residual group (all its producers and readers) are removed;
    a channel dead in only one producer of the residual group stays."""
    arch = build_arch("resnet20", 3, 16, 10)
    model = random_model(arch)
    plain = arch.group_of["layer1.0.conv1"]
    residual = arch.group_of["conv1"]
    assert len(arch.group(residual).producers) > 1
    kill(model, arch, plain, [2, 5])
    kill(model, arch, residual, [3])
    with torch.no_grad():  # dead in one producer only: must stay
        model.get_submodule(arch.group(residual).producers[0]).weight[7] = 0.0
    check_exact(arch, model, {plain: [2, 5], residual: [3]}, 16)
    student, _, _ = shrink(model, arch, "both")
    assert alive_macs(random_model(arch), arch) == count_macs(arch)
    assert alive_macs(model, arch) <= count_macs(student) < count_macs(arch)


def test_structural_student_equals_masked_lenet_through_flatten():
    """LeNet-5 on 28x28: a conv channel feeds 25 features of fc1 through the flatten."""
    arch = build_arch("lenet5", 1, 28, 10)
    model = random_model(arch)
    conv2, fc1 = arch.group_of["conv2"], arch.group_of["fc1"]
    kill(model, arch, conv2, [1, 7])
    kill(model, arch, fc1, [3, 50, 119])
    check_exact(arch, model, {conv2: [1, 7], fc1: [3, 50, 119]}, 28, channels=1)


def test_dead_rules():
    """both: filters and inputs zero; inputs: unused channels (exact); filters: the paper's dead filters."""
    arch = build_arch("resnet20", 3, 16, 10)
    model = random_model(arch)
    gid = arch.group_of["layer2.0.conv1"]
    kill(model, arch, gid, [0], inputs=False)
    kill(model, arch, gid, [1], filters=False)
    kill(model, arch, gid, [2])
    assert dead_channels(model, arch, gid, "both") == [2]
    assert dead_channels(model, arch, gid, "inputs") == [1, 2]
    assert dead_channels(model, arch, gid, "filters") == [0, 2]
    student, module, _ = shrink(model, arch, "inputs")  # unused channels: still exact
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(module(x), model(x), atol=1e-5, rtol=1e-4)


def make_agent(tiny, evaluations=5, run_dir=None, target=None, **overrides):
    log = RunLog(Budget(evaluations), path=None if run_dir is None else run_dir / "evaluations.jsonl")
    env = Recorder(ChannelRatioEnv(arch="resnet20", target=target, **tiny), log)
    return HoyerAgent(env, HoyerConfig(**overrides), seed=0, run_dir=run_dir), env


def test_regularised_training_lowers_the_group_penalty(tiny):
    """The regulariser is in the loss: a strong Group-HS decay lowers sum_l GHS(W_l) far more than none."""
    agent, env = make_agent(tiny)
    ev, arch = env.unwrapped.evaluator, env.unwrapped.arch
    config = TrainConfig(epochs=1, max_steps=8, batch_size=32, loss="ce", optimizer="adam", lr=1e-2,
                         weight_decay=0.0, train_max=64)
    after = {}
    for decay in (0.0, 0.05):
        model = build_module(arch)
        model.load_state_dict(ev.teacher.model.state_dict())
        tensors = weight_tensors(model, arch)
        before = penalty(tensors.values(), "ghs").item()
        train_phase(model, ev.dataset, config, [], 0.1, ev.device, seed=0,
                    reg=lambda d=decay, t=tensors: d * penalty(t.values(), "ghs"))
        after[decay] = penalty(tensors.values(), "ghs").item()
    assert after[0.05] < after[0.0] and after[0.05] < before


def test_structural_points_submit_real_students_with_their_weights(tiny, tmp_path):
    agent, env = make_agent(tiny, run_dir=tmp_path, **PARTIAL)
    agent.run()
    records, points = env.records, agent.notes["points"]
    assert len(records) == len(points) == 2 and agent.budget.charged_seconds > 0
    for record, point in zip(records, points):
        student = arch_from_dict(record["student"])
        assert record["valid"] and point["physical"] and point["removed_channels"]
        assert record["params"] == count_params(student) == point["student_params"] < record["teacher_params"]
        weights = torch.load(tmp_path / record["weights"], weights_only=True)
        module = build_module(student)
        module.load_state_dict(weights)  # the fine-tuned weights, scored as submitted (env_train=False)
        ev = env.unwrapped.evaluator
        acc = evaluate(module, ev.scored, ev.dataset, max_items=ev.fidelity.train.eval_max)[0]
        assert acc == pytest.approx(record["accuracy"])
        assert 0 < point["density"] < 1 and point["nonzeros"] < point["pruned_total"]
    model, arch, meta = load_student(tmp_path / "best_student.pt")
    best = max(records, key=lambda r: r["reward"])
    assert meta["index"] == best["index"] and agent.notes["final"]["index"] == best["index"]


def test_element_wise_point_says_no_smaller_network_was_made(tiny):
    agent, env = make_agent(tiny, regularizer="hs", decays=[1e-3], threshold=1e-3)
    agent.run()
    (record,), (point,) = env.records, agent.notes["points"]
    assert not point["physical"] and "no physically smaller network" in point["note"]
    assert point["structural"] is False and point["nonzeros"] <= point["pruned_total"] == point["dense_params"]
    assert not record["valid"] and "not fewer" in record["invalid_reason"]
    facts = record["facts"]  # the record itself says what was made: density and nonzeros, nothing physical
    assert facts["physical"] is False and facts["density"] == pytest.approx(point["density"])
    assert facts["nonzeros"] == point["nonzeros"] and facts["dense_params"] == point["dense_params"]


def test_one_evaluation_per_decay_within_the_budget(tiny):
    agent, env = make_agent(tiny, evaluations=1, decays=[1e-4, 1e-3, 1e-2], threshold=0.07)
    agent.run()
    assert len(env.records) == 1 and agent.next == 1 and agent.budget.exhausted


def test_config_errors():
    with pytest.raises(ValueError, match="regularizer='ghz'"):
        HoyerConfig(regularizer="ghz")
    with pytest.raises(ValueError, match="dead_rule"):
        HoyerConfig(dead_rule="any")
    with pytest.raises(ValueError, match="decays"):
        HoyerConfig(decays=[])
    assert HoyerConfig(decays=1e-3).decays == [1e-3]
    assert HoyerConfig(final_epochs=0).phase("final") is None
    assert HoyerConfig(regularizer="hs").tensors == "all" and HoyerConfig(regularizer="gl").tensors == "weights"


def test_cli_smoke_and_resume_after_a_kill(tiny_config, tmp_path, monkeypatch):
    """run_agent.py --agent hoyer; a run killed after a submission (before its checkpoint) resumes to the
    record an uninterrupted run writes (the runner's replay check compares the students)."""
    config = tmp_path / "hoyer.yaml"
    base = yaml.safe_load(Path(tiny_config).read_text())
    base["agent_config"] = dict(PARTIAL)
    config.write_text(yaml.safe_dump(base))
    args = ("--env", "channel-ratio-resnet20-synthetic", "--agent", "hoyer", "--config", config)
    assert cli(*args, "--out", tmp_path / "whole") == 0
    whole = read_records(tmp_path / "whole" / "evaluations.jsonl")
    summary = json.loads((tmp_path / "whole" / "summary.json").read_text())
    assert len(whole) == 2 and summary["charged_seconds"] > 0 and len(summary["notes"]["points"]) == 2

    original = HoyerAgent.run_point

    def killed(self, i):
        point = original(self, i)
        if i == 1:
            raise KeyboardInterrupt  # after the second submission, before its checkpoint
        return point

    monkeypatch.setattr(HoyerAgent, "run_point", killed)
    with pytest.raises(KeyboardInterrupt):
        cli(*args, "--out", tmp_path / "killed")
    assert len(read_records(tmp_path / "killed" / "evaluations.jsonl")) == 2
    monkeypatch.setattr(HoyerAgent, "run_point", original)
    assert cli("--resume", tmp_path / "killed") == 0
    resumed = read_records(tmp_path / "killed" / "evaluations.jsonl")
    keys = ("arch_key", "params", "accuracy", "reward", "valid")
    assert [[r[k] for k in keys] for r in resumed] == [[r[k] for k in keys] for r in whole]


def test_a_sigkill_between_submissions_resumes_to_the_uninterrupted_record(tiny_config, tmp_path):
    """A real SIGKILL (a subprocess), not an exception: the resumed run ends with the same students."""
    import sys

    from netcomp.jsonl import read_jsonl
    from tests.test_run_integrity import ROOT, _kill_when, _resume

    config = tmp_path / "hoyer.yaml"
    base = yaml.safe_load(Path(tiny_config).read_text())
    base["agent_config"] = {**PARTIAL, "decays": [1e-4, 3e-4, 1e-3, 3e-3]}
    config.write_text(yaml.safe_dump(base))

    def cmd(out):
        return [sys.executable, str(ROOT / "run_agent.py"), "--env", "channel-ratio-resnet20-synthetic", "--agent",
                "hoyer", "--config", str(config), "--seed", "3", "--out", str(out)]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    import subprocess  # both runs in subprocesses: the same torch threads, so the same floats

    subprocess.run(cmd(whole), check=True, cwd=ROOT, capture_output=True)
    _kill_when(cmd(killed), lambda: len(read_jsonl(killed / "evaluations.jsonl", repair=False)) >= 2)
    assert 2 <= len(read_records(killed / "evaluations.jsonl")) < 4, "the run must be killed in the middle"
    done = _resume(killed)
    assert done.returncode == 0, done.stderr
    keys = ("index", "arch_key", "params", "accuracy", "reward", "valid")
    after, ref = read_records(killed / "evaluations.jsonl"), read_records(whole / "evaluations.jsonl")
    assert [[r[k] for k in keys] for r in after] == [[r[k] for k in keys] for r in ref]


def test_the_agent_trains_with_its_decay_times_the_regulariser_and_fine_tunes_with_the_masks(tiny, monkeypatch):
    """The wiring of run_point: the first phase's extra loss is decay * sum R(W) of the model's weights (none at
    decay 0), the fine-tune gets the pruning masks and no regulariser."""
    import baselines.hoyer as hoyer

    calls = []
    real = hoyer.train_phase
    agent, env = make_agent(tiny, decays=[0.0, 0.5], threshold=0.07)

    def spy(model, *args, reg=None, masks=None, tensors=None, **kw):
        weights = weight_tensors(model, env.unwrapped.arch, "weights")
        with torch.no_grad():
            calls.append({"reg": None if reg is None else float(reg()), "masks": masks,
                          "penalty": float(penalty(weights.values(), "ghs"))})
        return real(model, *args, reg=reg, masks=masks, tensors=tensors, **kw)

    monkeypatch.setattr(hoyer, "train_phase", spy)
    agent.run()
    assert len(calls) == 4  # a training and a fine-tune per decay
    (train0, ft0), (train1, ft1) = calls[:2], calls[2:]
    assert train0["reg"] is None and ft0["reg"] is None and ft0["masks"]
    assert train1["reg"] == pytest.approx(0.5 * train1["penalty"], rel=1e-5)
    assert ft1["reg"] is None and ft1["masks"]


def test_fibres_reach_group_hs_only_when_asked():
    """The MNIST CNN script sums fibres in group lasso only; fibre_scope 'all' also changes Group-HS."""
    assert HoyerConfig(grouping="fibre").reg_grouping == "whole"                       # ghs, scope gl
    assert HoyerConfig(grouping="fibre", regularizer="gl").reg_grouping == "fibre"
    assert HoyerConfig(grouping="fibre", fibre_scope="all").reg_grouping == "fibre"
    assert HoyerConfig(fibre_scope="all").reg_grouping == "whole"                      # no fibres asked
    with pytest.raises(ValueError, match="fibre_scope"):
        HoyerConfig(fibre_scope="ghs")


def test_the_agent_regularises_with_the_scoped_grouping(tiny, monkeypatch):
    import baselines.hoyer as hoyer

    seen = []
    real = hoyer.penalty

    def spy(tensors, name, grouping):
        seen.append((name, grouping))
        return real(tensors, name, grouping)

    monkeypatch.setattr(hoyer, "penalty", spy)
    for scope, expected in (("gl", "whole"), ("all", "fibre")):
        seen.clear()
        agent, _ = make_agent(tiny, decays=[1e-3], grouping="fibre", fibre_scope=scope, threshold=0.07)
        agent.run()
        assert seen and set(seen) == {("ghs", expected)}


def test_per_point_prune_levels():
    cfg = HoyerConfig(decays=[1e-3, 1e-1], prune_levels=[1e-4, 0.05])
    assert cfg.prune_args(0) == (1e-4, 0.25) and cfg.prune_args(1) == (0.05, 0.25)     # tau of the threshold rule
    cfg = HoyerConfig(decays=[1e-3, 1e-1], prune_levels=[0.25, 2.0], prune_rule="std")
    assert cfg.prune_args(1) == (1e-4, 2.0)                                            # s of the std rule
    assert HoyerConfig(threshold=0.07).prune_args(2) == (0.07, 0.25)                   # none: the run's values
    with pytest.raises(ValueError, match="one level per decay"):
        HoyerConfig(decays=[1e-3, 1e-2], prune_levels=[0.1])


@pytest.mark.parametrize("preset", ["smoke", "fast"])
def test_the_quick_presets_record_a_valid_smaller_student_at_the_smoke_fidelity(preset, tiny_config, tmp_path):
    """`--preset fast --fidelity smoke` (and `--preset smoke`): the point that prunes gives a real smaller
    student; every invalid record says why."""
    out = tmp_path / "run"
    assert cli("--env", "channel-ratio-resnet20-synthetic", "--agent", "hoyer", "--preset", preset,
               "--fidelity", "smoke", "--config", tiny_config, "--out", out) == 0
    records = read_records(out / "evaluations.jsonl")
    presets = yaml.safe_load((Path(__file__).parents[1] / "configs" / "hoyer.yaml").read_text())["presets"]
    assert len(records) == len(presets[preset]["agent"]["decays"])
    smaller = [r for r in records if r["valid"] and r["params"] < r["teacher_params"]]
    assert smaller, [r["invalid_reason"] for r in records]
    assert all(r["invalid_reason"] for r in records if not r["valid"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best"]["valid"] and summary["notes"]["points"][-1]["prune_level"] == 2.0


@pytest.mark.parametrize("metric, rule", [("macs", "threshold"), ("params", "threshold"), ("macs", "std")])
def test_under_a_target_each_point_prunes_at_the_smallest_level_that_reaches_it(tiny, metric, rule):
    """The protocol's operating point: the pruning level rises from the configured one to the target's; the
    submitted student is at or below it by the engine's counters, and a slightly lower level would not be."""
    level = {"threshold": {"threshold": 1e-4}, "std": {"std_scale": 1e-4}}[rule]
    agent, env = make_agent(tiny, target={metric: 0.5}, decays=[1e-3], prune_rule=rule, **level)
    agent.run()
    (record,), (point,) = env.records, agent.notes["points"]
    teacher = env.unwrapped.evaluator.teacher_macs if metric == "macs" else env.unwrapped.evaluator.teacher_params
    assert record["valid"] and record[metric] <= 0.5 * teacher and point["prune_level"] > 1e-4
    assert record["facts"]["prune_level"] == point["prune_level"]   # in the record's facts
    lower = {key: point["prune_level"] * 0.99 for key in level}
    below, _ = make_agent(tiny, target={metric: 0.5}, decays=[1e-3], prune_rule=rule, fit_target=False, **lower)
    below.run()                                # the same training, pruned 1% below the fitted level: over target
    assert not below.env.records[0]["valid"] and below.env.records[0]["invalid_reason"].startswith("over target")


def test_without_fitting_a_point_above_the_target_is_over_target_and_without_a_target_the_level_is_kept(tiny):
    agent, env = make_agent(tiny, target={"macs": 0.5}, decays=[1e-3], threshold=1e-4, fit_target=False)
    agent.run()
    assert env.records[0]["invalid_reason"].startswith("over target")
    assert agent.notes["points"][0]["prune_level"] == 1e-4
    agent, env = make_agent(tiny, decays=[1e-3], threshold=1e-4)
    agent.run()
    assert agent.notes["points"][0]["prune_level"] == 1e-4
