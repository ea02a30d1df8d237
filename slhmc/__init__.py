"""slhmc: self-learning hybrid Monte Carlo (Nagai et al., Phys. Rev. B 102, 041124(R) (2020))."""

__version__ = "0.1.0"
