"""The published compression methods, one readable file each, as agents on the common interface.

- ``baselines.n2n``: N2N (Ashok et al., ICLR 2018), two-stage REINFORCE.

ESNAC, LeGR, TAS and DeepHoyer join here. Each file holds its hyper-parameters in one dataclass whose
defaults are the paper's code (``configs/<method>.yaml``); every deviation is a named switch. The generic
agents a new method is compared with (random search, Stable-Baselines3) live in ``agents/``.
"""
