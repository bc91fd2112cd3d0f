"""a3c: asynchronous advantage actor-critic (Mnih et al. 2016) for Atari, on CPU cores."""

__version__ = "0.1.0"
