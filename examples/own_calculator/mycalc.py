"""A reference calculator of your own: ``calculator = "mycalc:morse_copper"`` in config.toml.

slhmc looks for the module ``mycalc`` on PYTHONPATH and then in the folder of the config file
that names it, so this file, next to config.toml, is found without setting PYTHONPATH (by the
config check of ``slhmc run`` and by every DFT worker whose config is that file). The function
is called with ``[reference.options]`` as keyword arguments, whose names are checked against its
signature before any process starts, and returns an ASE calculator that gives the energy (eV)
and forces (eV/Å) of a structure. Replace its body with your own: a DFT code with your site's
settings, a calculator you wrote.

This one is a Cu-Cu Morse pair potential, cheap enough for the example to run in seconds.
"""

from __future__ import annotations

from ase.calculators.morse import MorsePotential


def morse_copper(depth: float = 0.3429, alpha: float = 1.3588, r0: float = 2.866,
                 cutoff: float = 5.5) -> MorsePotential:
    """V(r) = depth * (exp(-2 alpha (r - r0)) - 2 exp(-alpha (r - r0))), switched off smoothly
    between ``cutoff - 0.5`` and ``cutoff``; the defaults are Girifalco and Weizer's parameters for
    copper (Phys. Rev. 114, 687 (1959)).

    depth: eV (well depth); alpha: 1/Å (stiffness); r0: Å (pair distance of the minimum); cutoff: Å.
    """
    if cutoff <= 0.5:
        raise ValueError(f"cutoff must exceed the 0.5-Å switching width, got {cutoff} Å")
    # ASE's MorsePotential: epsilon * exp(rho0 (1 - r/r0)) * (exp(rho0 (1 - r/r0)) - 2), cutoffs in units of r0
    return MorsePotential(epsilon=depth, r0=r0, rho0=alpha * r0, rcut1=(cutoff - 0.5) / r0, rcut2=cutoff / r0)
