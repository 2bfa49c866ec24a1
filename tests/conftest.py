"""Shared test setup: a private NETCOMP_HOME (teachers are trained once per session) and tiny data."""

import os
import tempfile

import pytest

# Set before any test imports the engine, so every cached teacher lands in a throw-away home.
os.environ.setdefault("NETCOMP_HOME", tempfile.mkdtemp(prefix="netcomp-test-home-"))

#: Synthetic data small enough that a smoke evaluation costs a fraction of a second on CPU.
TINY = {"image_size": 16, "train_size": 256, "val_size": 64, "test_size": 64}


@pytest.fixture
def tiny():
    """Keyword arguments that make an environment use the tiny synthetic data set."""
    return {"dataset": "synthetic", "fidelity": "smoke", "dataset_kwargs": dict(TINY)}
