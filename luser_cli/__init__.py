"""luser: loop-unrolled shallow equilibrium regularisers for imaging inverse problems."""

__version__ = "0.1.0"
