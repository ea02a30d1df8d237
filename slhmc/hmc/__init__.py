"""The hybrid Monte Carlo core, in one place: what every sampler in slhmc shares.

One trial t of HMC from the chain state (r, E_ref(r)):

1. draw momenta p ~ N(0, m k_B T) and one uniform u from the (seed, t) stream (:mod:`.draws`);
2. integrate L velocity-Verlet steps with some forces — the network's in SLHMC (:mod:`.integrator`);
3. label the end point r' with the reference and accept with min(1, exp(-ΔH / k_B T)),
   ΔH = K(p') + E_ref(r') - K(p) - E_ref(r) (:mod:`.acceptance`, :mod:`.chain`).

The chain samples exp(-E_ref / k_B T) exactly whatever forces drive step 2, provided that the
map (r, p) -> (r', p') is time-reversible and volume-preserving (velocity Verlet with forces that
are a function of the positions alone; ``tests/test_integrator.py``) and that ΔH uses the
reference energies at both ends. The server, the ML-MD worker and the in-process reference
sampler (:mod:`slhmc.validation`) all use these functions, so that what the statistical tests
check is what runs.

In the isothermal–isobaric ensemble (:mod:`.npt`) a trial is, with a fixed probability drawn from
its stream, a cell trial instead: an inner chain of cell moves with scaled coordinates driven by
the network's energy, its end point accepted with the self-learning correction
exp(-β[(E_ref - E_ML)' - (E_ref - E_ML)]).
"""

from .acceptance import accept, delta_h, kinetic_energy
from .chain import ChainState, Step, metropolis_step
from .draws import TrialDraws, draw, trial_random
from .integrator import EnergyForces, Trajectory, velocity_verlet
from .npt import (
    CellDraws,
    CellEnergy,
    CellMove,
    CellStep,
    InnerChain,
    NPTDraws,
    VolumeStep,
    anisotropic_move,
    cell_log_acceptance,
    cell_move,
    cell_step,
    inner_cell_chain,
    isotropic_move,
    npt_draw,
    pressure_eV_per_A3,
    slmc_log_acceptance,
    standard_cell,
    volume,
)

__all__ = [
    "CellDraws", "CellEnergy", "CellMove", "CellStep", "ChainState", "EnergyForces", "InnerChain", "NPTDraws", "Step",
    "Trajectory", "TrialDraws", "accept", "anisotropic_move", "cell_log_acceptance", "cell_move", "cell_step",
    "delta_h", "draw", "inner_cell_chain", "isotropic_move", "kinetic_energy", "metropolis_step", "npt_draw",
    "pressure_eV_per_A3", "slmc_log_acceptance", "standard_cell", "trial_random", "velocity_verlet", "volume",
    "VolumeStep",
]
