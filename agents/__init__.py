"""The Agent contract (``agents/base.py``) and the generic agents every method is compared with: random
search (``random_search.py``), Stable-Baselines3's PPO and A2C (``sb3.py``) and the Optuna samplers
(``optuna_agents.py``). The published methods live in ``baselines/``; the ``--agent`` registry in
``runner/registry.py``."""

from agents.base import Agent, Budget, BudgetExhausted

__all__ = ["Agent", "Budget", "BudgetExhausted"]
