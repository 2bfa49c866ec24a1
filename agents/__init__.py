"""Agents with one interface (agents/base.py). ``AGENTS`` maps a ``--agent`` name to its class."""

from __future__ import annotations

import importlib

from agents.base import Agent

#: name -> "module:Class" (imported when used, so listing agents stays cheap).
AGENTS: dict[str, str] = {
    "n2n": "baselines.n2n:N2NAgent",
    "esnac": "baselines.esnac:ESNACAgent",
    "random": "agents.random_search:RandomAgent",
    "ppo": "agents.sb3:PPOAgent",
    "a2c": "agents.sb3:A2CAgent",
}


def get_agent(name: str) -> type[Agent]:
    """The agent class registered under ``name``; ValueError lists the registered agents."""
    if name not in AGENTS:
        raise ValueError(f"unknown agent {name!r}; expected one of {', '.join(AGENTS)}")
    module, _, cls = AGENTS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


__all__ = ["AGENTS", "Agent", "get_agent"]
