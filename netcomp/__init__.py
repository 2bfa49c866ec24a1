"""netcomp: the compression engine of netcomp-gym (architecture IR, zoo, surgery, data, training).

The engine never imports gymnasium; environments (envs/) and agents (agents/) build on it.
"""

__version__ = "0.1.0"
