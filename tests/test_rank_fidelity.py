"""The cheap fidelity that ranks: inherited weights by fidelity, BatchNorm recalibration, the rank study."""

import numpy as np
import pytest
import torch
from torch import nn

from envs.removal import RemovalEnv
from netcomp.data import load_dataset
from netcomp.distill import recalibrate_bn, recalibration_batches
from netcomp.evaluator import load_fidelity
from tests.conftest import TINY


def test_recalibrated_bn_statistics_are_the_mean_over_the_batches():
    data = load_dataset("synthetic", **TINY)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    bn = model[1]
    bn.running_mean.fill_(5.0)
    bn.momentum = 0.3
    batches = recalibration_batches(data.train, data, batch_size=32, batches=2)
    assert [len(x) for x in batches] == [32, 32]
    recalibrate_bn(model.eval(), batches)
    x = (data.train.x[:64].float() / 255 - torch.tensor(data.mean).view(1, -1, 1, 1)) / torch.tensor(
        data.std).view(1, -1, 1, 1)
    with torch.no_grad():
        feats = model[0](x)
    means = torch.stack([feats[:32].mean(dim=(0, 2, 3)), feats[32:].mean(dim=(0, 2, 3))]).mean(0)
    assert torch.allclose(bn.running_mean, means, atol=1e-5)
    assert bn.momentum == 0.3 and not model.training                     # settings restored


def test_the_reference_trains_ten_times_longer_than_rank_on_the_same_recipe():
    rank, reference = load_fidelity("rank", "removal"), load_fidelity("reference", "removal")
    assert reference.train.train_max == 10 * rank.train.train_max
    assert {**reference.train.to_dict(), "train_max": 0, "eval_max": 0} == {**rank.train.to_dict(), "train_max": 0,
                                                                           "eval_max": 0}
    assert reference.train.eval_max is None and reference.inherit == rank.inherit == "indices"


def test_the_rank_fidelity_inherits_weights_where_the_space_reinitialises(tiny):
    assert load_fidelity("rank", "removal").inherit == "indices"
    assert load_fidelity("fast", "removal").inherit is None
    env = RemovalEnv(arch="resnet20", **{**tiny, "fidelity": "rank"})
    assert env.evaluator.inherit == "indices"
    assert RemovalEnv(arch="resnet20", **tiny).evaluator.inherit == "reinit"       # N2N's default elsewhere
    assert RemovalEnv(arch="resnet20", inherit="reinit", **{**tiny, "fidelity": "rank"}).evaluator.inherit == "reinit"
    with pytest.raises(ValueError, match="unknown fidelity inherit"):
        load_fidelity({"train": {}, "inherit": "copy"})


@pytest.mark.expensive
def test_the_rank_study_runs_and_reports_every_figure(tmp_path, monkeypatch):
    """A small version of benchmarks/fidelity_rank.py (synthetic data, 6 students)."""
    from benchmarks import fidelity_rank

    monkeypatch.setenv("NETCOMP_HOME", str(tmp_path / "home"))
    out = fidelity_rank.main(["--space", "removal", "--dataset", "synthetic", "--students", "6",
                              "--fidelities", "smoke", "rank", "--reference", "reference",
                              "--json", str(tmp_path / "r.json")])
    assert out["students"] == 6 and set(out["fidelities"]) == {"smoke", "rank"}
    for row in out["fidelities"].values():
        assert -1 <= row["seed_spearman"] <= 1 and row["seconds"] > 0
        assert len(row["accuracy"][0]) == 6 and np.isfinite(row["ref_spearman"])
    assert out["fidelities"]["rank"]["cost_ratio"] > 0  # the tiny synthetic set caps the reference's images
