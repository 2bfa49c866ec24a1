"""N2N moved to ``baselines/n2n.py`` (the published methods live in ``baselines/``); this name still imports."""

from baselines.n2n import *  # noqa: F403
from baselines.n2n import N2NAgent, N2NConfig  # noqa: F401
