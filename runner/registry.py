"""The ``--agent`` names: the generic agents (agents/) and the published methods (baselines/), and users' own.

The harness owns the registry, so agents/ depends on neither baselines/ nor the harness.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from agents.base import Agent
from netcomp.checks import did_you_mean

#: name -> "module:Class" (imported when used, so listing agents stays cheap).
AGENTS: dict[str, str] = {
    "n2n": "baselines.n2n:N2NAgent",
    "esnac": "baselines.esnac:ESNACAgent",
    "legr": "baselines.legr:LegrAgent",
    "l2-global": "baselines.legr:L2GlobalAgent",
    "uniform": "baselines.legr:UniformAgent",
    "uniform-random": "baselines.legr:RandomChannelsAgent",
    "tas": "baselines.tas:TASAgent",
    "hoyer": "baselines.hoyer:HoyerAgent",
    "random": "agents.random_search:RandomAgent",
    "ppo": "agents.sb3:PPOAgent",
    "a2c": "agents.sb3:A2CAgent",
    "sb3": "agents.sb3_zoo:AnySB3Agent",
    "tpe": "agents.optuna_agents:TPEAgent",
    "cmaes": "agents.optuna_agents:CmaEsAgent",
    "gp": "agents.optuna_agents:GPAgent",
    "nsga2": "agents.optuna_agents:NSGA2Agent",
    "asha": "agents.optuna_agents:ASHAAgent",
}


def get_agent(name: str) -> type[Agent]:
    """The agent class registered under ``name``, or a user's: ``path/to/file.py:Class`` or ``package.module:Class``.

    ValueError lists the registered agents, or says what is wrong with a user's reference (no such file or
    module, no such class, not an :class:`Agent` subclass).
    """
    if name in AGENTS:
        module, _, cls = AGENTS[name].partition(":")
        return getattr(importlib.import_module(module), cls)
    if ":" not in name:
        raise ValueError(f"unknown agent {name!r}{did_you_mean(name, AGENTS)}; expected one of {', '.join(AGENTS)}, "
                         f"or FILE.py:Class / package.module:Class for your own")
    return _user_agent(name)


def _user_agent(ref: str) -> type[Agent]:
    """A user's Agent subclass from ``file.py:Class`` or ``package.module:Class``."""
    where, _, cls_name = ref.rpartition(":")
    if where.endswith(".py"):
        path = Path(where).expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"agent file {where!r} does not exist")
        spec = importlib.util.spec_from_file_location(f"user_agent_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses and pickling look the module up by name
        spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as exc:
            raise ValueError(f"cannot import {where!r} for agent {ref!r}: {exc}") from None
    cls = getattr(module, cls_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Agent)):
        raise ValueError(f"{ref!r}: {cls_name!r} is not an agents.base.Agent subclass in {where}")
    return cls
