"""netcomp: the compression engine of netcomp-gym (architecture IR, zoo, surgery, data, training).

The engine never imports gymnasium; environments (envs/) and agents (agents/) build on it.
"""

__version__ = "0.1.0"

from netcomp.cpu_numerics import pin_cpu_numerics

# Before the engine trains anything: every CPU training then computes the same floats on any AVX2 CPU.
pin_cpu_numerics()
