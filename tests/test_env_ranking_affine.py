"""The ranking-affine space (LeGR): genomes, checkers, the greedy's FLOPs target, ranking, quotas, inheritance."""

import math
import re

import numpy as np
import pytest
import torch
from gymnasium import spaces
from hypothesis import given, settings

from envs.channel_ratio import conv_features
from envs.ranking_affine import RankingAffineEnv, gene_convs, legr_quota
from netcomp.arch import prunable_layers
from netcomp.metrics import GroupCostModel, count_macs
from netcomp.surgery import build_module, inherit_weights, keep_channels, set_widths
from tests.envcheck import action_cases, run_checkers

pytestmark = pytest.mark.usefixtures("one_thread")


def make(tiny, **kw):
    return RankingAffineEnv(arch=kw.pop("arch", "resnet20"), device="cpu", **tiny, **kw)


def conv_norms(env, name: str) -> np.ndarray:
    """LeGR's l2_weight score of one conv, by hand from the teacher: per filter, its squared L2 norm."""
    weight = env.teacher.model.get_submodule(name).weight.detach().double()
    return weight.pow(2).sum(dim=tuple(range(1, weight.dim()))).numpy()


def base_scores(env) -> dict[str, np.ndarray]:
    """LeGR's l2_weight chain score from the teacher's weights: per filter, the sum of squared L2 norms."""
    return {gid: sum(conv_norms(env, p) for p in env.arch.group(gid).producers) for gid in env.gids}


def gene_scores(env) -> list[np.ndarray]:
    """Each gene's own base scores, in gene order: a conv's squared norms, or its group's summed ones."""
    groups = base_scores(env)
    return [groups[g] if env.genome == "group" else conv_norms(env, g) for g in env.genes]


def genes_of(env, gid: str) -> list[int]:
    """Positions in the gene order of the genes that score group ``gid``."""
    names = {gid} if env.genome == "group" else set(env.arch.group(gid).producers)
    return [i for i, g in enumerate(env.genes) if g in names]


def student_keep(env, gid: str) -> list[int]:
    keep = env.student.node(env.arch.group(gid).producers[0]).keep
    return list(range(env.arch.group(gid).width)) if keep is None else list(keep)


def min_kept(n: int, s: float) -> int:
    """Filters a group of n must keep under LeGR's rule: quota min(floor(n(1-s)), n-2), or n-1 when s=0."""
    quota = max(0, min(math.floor(n * (1 - s)), n - 2)) if s > 0 else n - 1
    return n - quota


@pytest.mark.parametrize("genome", ["conv", "group"])
@pytest.mark.parametrize("mode", ["oneshot", "sequential"])
def test_checkers_pass(tiny, mode, genome, recwarn):
    env = make(tiny, mode=mode, genome=genome, render_mode="ansi")
    run_checkers(env, recwarn)
    g = len(env.genes)
    assert env.action_space.shape == ((2 * g,) if mode == "oneshot" else (2,))
    assert env.observation_space.shape == ((g, 12) if mode == "oneshot" else (15,))
    assert env.action_space.dtype == np.float32
    assert env.reward_name == "legr" and env.evaluator.inherit == "indices"


def test_default_genome_is_one_pair_per_producer_conv(tiny):
    env = make(tiny)
    convs = tuple(n for n in prunable_layers(env.arch) if env.arch.node(n).op == "conv")
    assert env.genome == "conv" and env.genes == env.layers == convs and len(convs) == 21  # stem, 18, 2 shortcuts
    assert env.action_space.shape == (42,) and env.observation_space.shape == (21, 12)
    grouped = make(tiny, genome="group")
    assert grouped.genes == grouped.gids == env.gids and len(env.gids) == 12
    assert grouped.action_space.shape == (24,) and grouped.observation_space.shape == (12, 12)
    conv, group = make(tiny, mode="sequential"), make(tiny, mode="sequential", genome="group")
    assert conv.observation_space == group.observation_space  # one width in both genomes
    assert conv.action_space == group.action_space == spaces.Box(-1, 1, (2,), np.float32)


@pytest.mark.parametrize("arch", ["lenet5", "mobilenetv2"])
def test_genes_are_every_producer_of_a_shrinkable_group(arch):
    from netcomp.zoo import build_arch

    net = build_arch(arch)
    cost = GroupCostModel(net)
    genes = gene_convs(net, cost)
    producers = [p for gid in cost.gids for p in net.group(gid).producers]
    assert sorted(genes) == sorted(producers) and len(set(genes)) == len(genes)
    assert list(genes) == [n for n in prunable_layers(net) if n in genes]  # node order
    assert not any(net.node(n).depthwise for n in genes)
    if arch == "lenet5":  # its hidden linear layers produce shrinkable widths, so they are genes too
        assert [n for n in genes if net.node(n).op == "linear"] == ["fc1", "fc2"]
    rows = conv_features(net, cost, genes)
    assert rows.shape == (len(genes), 12) and np.all(np.isfinite(rows)) and np.all(np.abs(rows) <= 10)


def test_conv_gene_rows_describe_the_conv_and_its_group(tiny):
    from envs.channel_ratio import GROUP_FEATURES

    env, grouped = make(tiny), make(tiny, genome="group")
    col = {c: i for i, c in enumerate(GROUP_FEATURES)}
    obs, _ = env.reset(seed=0)
    row = {name: obs[t] for t, name in enumerate(env.genes)}
    group_row = dict(zip(grouped.gids, grouped.reset(seed=0)[0]))
    assert row["conv1"][col["kernel"]] == pytest.approx(3 / 7)
    assert row["layer2.0.shortcut.conv"][col["kernel"]] == pytest.approx(1 / 7)  # its own kernel, not the group's
    assert row["layer2.0.shortcut.conv"][col["log_in"]] == pytest.approx(math.log2(16) / 11)
    assert row["layer2.1.conv2"][col["log_in"]] == pytest.approx(math.log2(32) / 11)
    assert [r[col["position"]] for r in obs] == pytest.approx(np.arange(21) / 20)
    assert row["layer2.1.conv2"][col["log_producers"]] == pytest.approx(math.log2(5) / 6)  # a 4-conv group
    assert row["layer2.1.conv1"][col["log_producers"]] == pytest.approx(math.log2(2) / 6)
    for name in env.genes:
        gid = env.arch.group_of[name]
        assert row[name][col["macs_share"]] == group_row[gid][col["macs_share"]]


def test_greedy_meets_its_flops_target_within_one_filter(tiny):
    env = make(tiny, flops_target=0.4)
    g = len(env.genes)
    rng = np.random.default_rng(0)
    actions = [np.zeros(2 * g)] + [rng.uniform(-1, 1, 2 * g) for _ in range(3)]
    for action in actions:
        env.reset(seed=0)
        _, _, _, _, info = env.step(action.astype(np.float32))
        student, target = env.student, info["target_macs"]
        assert target == pytest.approx(0.4 * count_macs(env.arch))
        assert info["macs"] == count_macs(student)
        assert info["widths"] == {gid: student.shapes[gid][0] for gid in env.gids}
        plan = env.prune_plan(np.array(info["alpha"]), np.array(info["kappa"]))
        assert plan.macs == count_macs(student) and info["pruned"] == len(plan.pruned)
        if info["met_target"]:
            assert count_macs(student) <= target
            gid, channel = plan.pruned[-1]  # putting the last pruned filter back would miss the target
            back = {k: sorted([*student_keep(env, k), channel]) if k == gid else student_keep(env, k)
                    for k in env.gids}
            assert count_macs(keep_channels(env.arch, back)) > target
        else:  # only when every group used up its quota
            assert count_macs(student) > target
            assert all(w == min_kept(env.arch.group(gid).width, 0.1) for gid, w in info["widths"].items())


@pytest.mark.parametrize("genome", ["conv", "group"])
def test_identity_action_is_plain_global_norm_ranking(tiny, genome):
    env = make(tiny, flops_target=0.5, genome=genome)
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.zeros(2 * len(env.genes), np.float32))
    assert info["alpha"] == [1.0] * len(env.genes) and info["kappa"] == [0.0] * len(env.genes)
    assert info["genome"] == genome and info["met_target"] and info["pruned"] > 0
    scores = base_scores(env)
    pruned, kept = [], []
    for gid in env.gids:
        keep = set(student_keep(env, gid))
        n = env.arch.group(gid).width
        pruned += [scores[gid][j] for j in range(n) if j not in keep]
        if len(keep) > min_kept(n, 0.1):  # a group whose quota ran out may keep low filters
            kept += [scores[gid][j] for j in keep]
    lowest = min(float(s.min()) for s in scores.values())
    assert min(pruned) == pytest.approx(lowest)       # the globally weakest filter goes first
    assert max(pruned) <= min(kept) + 1e-9            # everything removed ranks below everything kept


@pytest.mark.parametrize("genome", ["conv", "group"])
def test_affine_maps_move_filters_in_the_global_ranking(tiny, genome):
    env = make(tiny, flops_target=0.5, genome=genome)
    g = len(env.genes)
    env.reset(seed=0)
    _, _, _, _, identity = env.step(np.zeros(2 * g, np.float32))
    full = {gid: env.arch.group(gid).width for gid in env.gids}
    victim = max(env.gids, key=lambda gid: full[gid] - identity["widths"][gid])  # the most pruned group
    genes = genes_of(env, victim)
    raised = np.zeros(2 * g, np.float32)
    raised[[g + i for i in genes]] = 1.0  # kappa part: shift the group's scores up by 3 std of each gene
    env.reset(seed=0)
    _, _, _, _, info = env.step(raised)
    stds = [float(np.std(s)) for s in gene_scores(env)]
    assert [info["kappa"][i] for i in genes] == pytest.approx([3 * stds[i] for i in genes])
    assert info["alpha"] == [1.0] * g
    assert info["widths"][victim] > identity["widths"][victim]
    lowered = np.zeros(2 * g, np.float32)
    lowered[genes] = -1.0  # alpha part: exp(-2) shrinks the group's scores
    env.reset(seed=0)
    _, _, _, _, info = env.step(lowered)
    assert [info["alpha"][i] for i in genes] == pytest.approx([math.exp(-2)] * len(genes))
    assert info["widths"][victim] <= identity["widths"][victim]


def test_group_scores_are_the_per_conv_affine_sum(tiny):
    env = make(tiny, flops_target=0.5)
    gid = "layer2.0.conv2"  # stage 2's residual group: the blocks' conv2s and the projection shortcut
    convs = env.arch.group(gid).producers
    assert set(convs) == {"layer2.0.conv2", "layer2.0.shortcut.conv", "layer2.1.conv2", "layer2.2.conv2"}
    n = len(env.genes)
    s = {name: conv_norms(env, name) for name in convs}  # squared filter norms, by hand from the teacher

    def candidate(raised: float) -> np.ndarray:
        """alpha = e^-2 and kappa = -3 std_l for the group's convs, except layer2.1.conv2's a = ``raised``."""
        action = np.zeros(2 * n, np.float32)
        for name in convs:
            action[[env.genes.index(name), n + env.genes.index(name)]] = -1.0
        action[env.genes.index("layer2.1.conv2")] = raised
        return action

    def by_hand(raised: float) -> np.ndarray:
        a = {name: raised if name == "layer2.1.conv2" else -1.0 for name in convs}
        return sum(math.exp(2 * a[name]) * s[name] - 3 * np.std(s[name]) for name in convs)

    action = candidate(-0.5)
    alpha, kappa = env.affine(list(zip(action[:n], action[n:])))
    assert alpha[env.genes.index("layer2.1.conv2")] == pytest.approx(math.exp(-1))
    assert kappa[env.genes.index("layer2.2.conv2")] == pytest.approx(-3 * np.std(s["layer2.2.conv2"]))
    scores = env.group_scores(alpha, kappa)
    np.testing.assert_allclose(scores[gid], by_hand(-0.5), rtol=1e-12)
    for other in env.gids:  # every other group keeps its plain summed norms
        if other != gid:
            np.testing.assert_allclose(scores[other], base_scores(env)[other], rtol=1e-12)
    # one conv's alpha reorders the group's filters, which no positive per-group affine map can do
    plain = sum(s.values())
    order = np.argsort(by_hand(-0.5), kind="stable")
    assert not np.array_equal(order, np.argsort(plain, kind="stable"))
    np.testing.assert_array_equal(np.argsort(scores[gid], kind="stable"), order)
    # so the student keeps other filters: the group's top ones by the hand-computed score
    kept = {}
    for raised in (-1.0, -0.5):  # all four alphas equal (plain order), then layer2.1.conv2's raised
        env.reset(seed=0)
        width = env.step(candidate(raised))[4]["widths"][gid]
        assert width < 32
        kept[raised] = student_keep(env, gid)
        assert kept[raised] == sorted(np.argsort(-by_hand(raised), kind="stable")[:width].tolist())
    assert kept[-1.0] == sorted(np.argsort(-plain, kind="stable")[:len(kept[-1.0])].tolist())
    assert kept[-0.5] != kept[-1.0]


def test_identity_student_is_the_same_under_both_genomes(tiny):
    conv, group = make(tiny, flops_target=0.4), make(tiny, flops_target=0.4, genome="group")
    ones = {env: (np.ones(len(env.genes)), np.zeros(len(env.genes))) for env in (conv, group)}
    by_conv, by_group = conv.group_scores(*ones[conv]), group.group_scores(*ones[group])
    for gid in conv.gids:  # bit for bit: the identity sums the same squared norms in the same order
        assert np.array_equal(by_conv[gid], by_group[gid])
        np.testing.assert_allclose(by_conv[gid], base_scores(conv)[gid], rtol=1e-12)
    infos = []
    for env in (conv, group):
        env.reset(seed=0)
        infos.append(env.step(np.zeros(2 * len(env.genes), np.float32))[4])
    assert infos[0]["pruned"] == infos[1]["pruned"] > 0 and infos[0]["widths"] == infos[1]["widths"]
    assert infos[0]["arch_key"] == infos[1]["arch_key"] and infos[0]["reward"] == infos[1]["reward"]
    assert all(student_keep(conv, gid) == student_keep(group, gid) for gid in conv.gids)
    assert conv.prune_plan(*ones[conv]) == group.prune_plan(*ones[group])
    with pytest.raises(ValueError, match="one entry per gene"):
        conv.group_scores(*ones[group])  # a per-group vector is not a per-conv genome


@pytest.mark.parametrize("safeguard", [0.1, 0.0])
def test_quota_rule_bounds_what_each_group_keeps(tiny, safeguard):
    env = make(tiny)
    floor = {gid: min_kept(env.arch.group(gid).width, safeguard) for gid in env.gids}
    least = count_macs(set_widths(env.arch, floor)) / count_macs(env.arch)
    env = make(tiny, flops_target=least / 2, safeguard=safeguard)  # unreachable: every quota gets used up
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.zeros(2 * len(env.genes), np.float32))
    assert not info["met_target"] and info["macs"] > info["target_macs"]
    for gid, width in info["widths"].items():
        n = env.arch.group(gid).width
        assert width == min_kept(n, safeguard) == (max(n - math.floor(0.9 * n), 2) if safeguard else 1)


def test_quota_function_follows_legrs_minimum_channel_rule():
    # the reference's worked examples for s = 0.1 (16 -> keep 2, 32 -> 4, 64 -> 7) and the n - 2 cap
    assert [n - legr_quota(n, 0.1) for n in (16, 32, 64)] == [2, 4, 7]
    assert [legr_quota(n, 0.1) for n in (1, 2, 3, 5, 10)] == [0, 0, 1, 3, 8]
    assert [legr_quota(n, 0.0) for n in (1, 2, 16)] == [0, 1, 15]


def test_kept_filters_inherit_the_teachers_weights_exactly(tiny):
    env = make(tiny, flops_target=0.4)
    env.reset(seed=0)
    rng = np.random.default_rng(3)
    env.step(rng.uniform(-1, 1, 2 * len(env.genes)).astype(np.float32))
    student, teacher = env.student, env.teacher.model
    module = build_module(student)
    inherit_weights(module, student, teacher, env.arch, mode=env.evaluator.inherit)
    checked = 0
    for name in ("layer1.0.conv1", "layer2.0.conv2", "layer3.1.conv1", "layer2.0.shortcut.conv"):
        k_out = student_keep(env, env.arch.group_of[name])
        k_in = student_keep(env, env.arch.group_of[env.arch.node(name).inputs[0]])
        assert torch.equal(module.get_submodule(name).weight, teacher.get_submodule(name).weight[k_out][:, k_in])
        bn = name.replace("conv", "bn")
        for attr in ("weight", "bias", "running_mean", "running_var"):
            assert torch.equal(getattr(module.get_submodule(bn), attr), getattr(teacher.get_submodule(bn), attr)[k_out])
        checked += len(k_out) < env.arch.group(env.arch.group_of[name]).width
    assert checked > 0  # at least one of them was really pruned
    k_fc = student_keep(env, env.arch.group_of[env.arch.node("fc").inputs[0]])
    assert torch.equal(module.get_submodule("fc").weight, teacher.get_submodule("fc").weight[:, k_fc])


def test_reward_is_minus_the_validation_loss(tiny):
    env = make(tiny)
    env.reset(seed=0)
    _, reward, _, _, info = env.step(np.zeros(2 * len(env.genes), np.float32))
    assert info["valid"] and reward == pytest.approx(-info["loss"])


@pytest.mark.parametrize("genome", ["conv", "group"])
def test_sequential_mode_maps_each_pair_and_prunes_at_the_end(tiny, genome):
    env = make(tiny, mode="sequential", genome=genome)
    env.reset(seed=0)
    g = len(env.genes)
    pairs = np.random.default_rng(1).uniform(-1, 1, (g, 2)).astype(np.float32)
    for t in range(g):
        obs, reward, terminated, _, info = env.step(pairs[t])
        assert terminated == (t == g - 1)
        if not terminated:
            assert reward == 0.0 and obs[-1] == pytest.approx(pairs[t].astype(np.float64).mean())
    stds = [float(np.std(s)) for s in gene_scores(env)]
    assert info["alpha"] == pytest.approx(np.exp(2 * pairs[:, 0].astype(np.float64)))
    assert info["kappa"] == pytest.approx(3 * pairs[:, 1].astype(np.float64) * stds)
    oneshot = make(tiny, genome=genome)
    oneshot.reset(seed=0)
    _, _, _, _, same = oneshot.step(np.concatenate([pairs[:, 0], pairs[:, 1]]))  # alpha part, then kappa part
    assert same["widths"] == info["widths"] and same["arch_key"] == info["arch_key"]


def test_bad_arguments_raise_value_error(tiny):
    for kw, word in ((dict(flops_target=0.0), "flops_target"), (dict(flops_target=1.5), "flops_target"),
                     (dict(safeguard=1.0), "safeguard"), (dict(safeguard="x"), "safeguard"),
                     (dict(genome="layer"), "genome 'layer'; expected one of conv, group"),
                     (dict(genome=None), "genome None; expected one of conv, group")):
        with pytest.raises(ValueError, match=word):
            make(tiny, **kw)


@pytest.mark.parametrize("mode", ["oneshot", "sequential"])
def test_bad_actions_raise_value_error_naming_the_space(tiny, mode):
    env = make(tiny, mode=mode)
    env.reset(seed=0)
    n = env.action_space.shape[0]
    bad = [np.zeros(n + 1, np.float32), np.zeros((n // 2, 2), np.float32), np.full(n, np.nan, np.float32),
           np.full(n, 1.5, np.float32), np.full(n, -np.inf), np.array(["a"] * n), np.ones(n, bool), None, "0.5",
           {"a": 1}, [[0.1], [0.2, 0.3]], np.ones(n) * 1j]
    for action in bad:
        with pytest.raises(ValueError, match=re.escape(str(env.action_space))):
            env.step(action)


def test_random_and_malformed_actions_never_crash_oneshot(tiny):
    env = make(tiny)
    pattern = re.escape(str(env.action_space))

    @settings(max_examples=100, deadline=None, database=None)
    @given(case=action_cases(2 * len(env.genes)))
    def check(case):
        action, valid = case
        env.reset(seed=0)
        if not valid:
            with pytest.raises(ValueError, match=pattern):
                env.step(action)
            return
        obs, reward, terminated, truncated, info = env.step(action)
        assert terminated and not truncated and math.isfinite(reward)
        assert env.observation_space.contains(obs)
        assert info["met_target"] == (info["macs"] <= info["target_macs"])
        assert info["valid"] or info["invalid_reason"]

    check()


def test_random_and_malformed_actions_never_crash_sequential(tiny):
    env = make(tiny, mode="sequential")
    pattern = re.escape(str(env.action_space))

    @settings(max_examples=200, deadline=None, database=None)
    @given(case=action_cases(2))
    def check(case):
        action, valid = case
        env.reset(seed=0)
        if not valid:
            with pytest.raises(ValueError, match=pattern):
                env.step(action)
            action = np.zeros(2, np.float32)  # the refused step left the episode where it was
        obs, reward, terminated, _, _ = env.step(action)
        assert not terminated and reward == 0.0
        assert env.observation_space.contains(obs) and obs[-3] == pytest.approx(1 / (len(env.genes) - 1))

    check()


def test_sb3_ppo_learns_for_a_few_steps(tiny):
    from stable_baselines3 import PPO

    env = make(tiny)
    model = PPO("MlpPolicy", env, n_steps=8, batch_size=8, n_epochs=1, device="cpu", seed=0)
    before = [p.detach().clone() for p in model.policy.parameters()]
    model.learn(16)
    assert model.num_timesteps == 16
    assert any(not torch.equal(a, b) for a, b in zip(before, model.policy.parameters()))  # PPO updated the policy
    rewards = model.rollout_buffer.rewards  # the env paid a real reward on every one-shot episode
    assert np.isfinite(rewards).all() and (rewards != 0).all()
