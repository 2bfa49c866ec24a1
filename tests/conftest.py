"""Shared test setup: a private NETCOMP_HOME (teachers are trained once per session) and tiny data."""

import os
import tempfile

import pytest
import torch

import netcomp  # noqa: F401  (pins torch's CPU kernels before any test runs one)

# Set before any test imports the engine, so every cached teacher lands in a throw-away home.
os.environ.setdefault("NETCOMP_HOME", tempfile.mkdtemp(prefix="netcomp-test-home-"))

# Tests train tiny networks: one intra-op thread is faster than two threads fighting over 2 shared cores,
# and a fixed thread count keeps float reductions (and so seeded results) identical across tests.
torch.set_num_threads(1)

#: Synthetic data small enough that a smoke evaluation costs a fraction of a second on CPU.
TINY = {"image_size": 16, "train_size": 256, "val_size": 64, "test_size": 64}


@pytest.fixture
def tiny():
    """Keyword arguments that make an environment use the tiny synthetic data set."""
    return {"dataset": "synthetic", "fidelity": "smoke", "dataset_kwargs": dict(TINY)}


@pytest.fixture
def tiny_config(tmp_path):
    """A --config file that makes run_agent.py use the tiny synthetic data at the smoke fidelity."""
    import yaml

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({"run": {"fidelity": "smoke", "threads": 1, "export": False,
                                            "dataset_kwargs": dict(TINY)}}))
    return str(path)


def cli(*argv) -> int:
    """run_agent.py's main() on string arguments (in this process)."""
    import run_agent

    return run_agent.main([str(a) for a in argv])


@pytest.fixture
def one_thread():
    """Tiny models train faster on one torch thread than on two contended ones (the CI box is shared)."""
    from agents.base import one_torch_thread

    with one_torch_thread():
        yield


#: What marks a test needs, read from its source: it starts run_agent.py in another process, a Ray cluster, or
#: reads real Fashion-MNIST / the shipped teachers. ``-m "not subprocess and not ray and not real_data"`` is
#: the fast core (about a minute on 2 cores).
_MARK_WORDS = {
    "subprocess": ("subprocess.", "_kill_when(", "_resume("),
    "ray": ("WorkerPool", "ray."),
    "real_data": ("fashionmnist", "shipped_teacher", "SHIPPED_DIR"),
}


def pytest_collection_modifyitems(config, items):
    """Mark every test by what its own source (and its module's helpers it names) does."""
    import inspect

    for item in items:
        if item.module.__name__.endswith("test_ray_workers"):
            item.add_marker("ray")
        try:
            source = inspect.getsource(item.function)
        except (OSError, TypeError):
            continue
        for mark, words in _MARK_WORDS.items():
            if any(word in source for word in words):
                item.add_marker(mark)
