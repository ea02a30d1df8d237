"""An exact reference sampler: plain hybrid Monte Carlo with ASE calculators, in one process.

With the same calculator for the trajectory and the acceptance this is textbook HMC, the exact
reference SLHMC is checked against; with a cheap calculator for the trajectory it is the SLHMC
algorithm without workers or sockets. It is built from the pieces the server and the ML-MD worker
use (:mod:`slhmc.hmc`), so that a test can swap one rule (``delta_h``) and show that the
statistics catch it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator
from ase.calculators.emt import EMT

from slhmc import hmc


def calculator_forces(atoms: Atoms, calc: Calculator) -> Callable[[np.ndarray], tuple[float, np.ndarray]]:
    work = atoms.copy()
    work.calc = calc

    def energy_forces(positions: np.ndarray) -> tuple[float, np.ndarray]:
        work.positions = positions
        return float(work.get_potential_energy()), work.get_forces().copy()

    return energy_forces


def plain_hmc(
    atoms: Atoms,
    reference: Calculator,
    temperature_K: float,
    trials: int,
    md_steps: int,
    timestep_fs: float,
    seed: int = 0,
    proposal: Calculator | None = None,
    delta_h: Callable[[float, float, float, float], float] = hmc.delta_h,
) -> list[dict]:
    """Run ``trials`` HMC trials; returns one record per trial (``e_chain``, ``accepted``, ``positions``).

    ``proposal``: the calculator that drives the trajectories (default: the reference itself).
    """
    masses = atoms.get_masses()
    ref = calculator_forces(atoms, reference)
    md = ref if proposal is None else calculator_forces(atoms, proposal)
    state = hmc.ChainState(0, 0, atoms.positions.copy(), atoms.cell.array.copy(), ref(atoms.positions)[0])
    records = []
    for t in range(trials):
        draws = hmc.draw(seed, t, masses, temperature_K)
        out = hmc.velocity_verlet(md, state.positions, draws.momenta, masses, md_steps, timestep_fs)
        e_new = out.e_end if proposal is None else ref(out.positions)[0]
        step = hmc.metropolis_step(state, draws, out.positions, out.momenta, e_new, masses, temperature_K,
                                   delta_h=delta_h)
        records.append({"trial": t, "accepted": step.accepted, "e_chain": state.energy, "positions": state.positions})
    return records


class DelayedEMT(EMT):
    """EMT that takes ``delay_s`` longer per call: a reference of calibrated cost, for benchmarks
    and fault tests (``reference.calculator = "slhmc.validation:delayed_emt"``)."""

    def __init__(self, delay_s: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.delay_s = delay_s

    def calculate(self, *args, **kwargs) -> None:
        time.sleep(self.delay_s)
        super().calculate(*args, **kwargs)


def delayed_emt(delay_s: float = 0.5) -> DelayedEMT:
    return DelayedEMT(delay_s=delay_s)


def rattled_emt_labels(n: int, seed: int = 0, repeat: tuple[int, int, int] = (2, 2, 2), rattle_A: float = 0.08,
                       strain: float = 0.01) -> list:
    """``n`` EMT-labelled copies of fcc Cu (cubic cell × ``repeat``), isotropically strained by up to
    ±``strain`` and displaced by ``rattle_A`` Å per component: training data for tests and benchmarks."""
    from ase.build import bulk

    from slhmc.potential.training import Label

    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        atoms = bulk("Cu", "fcc", a=3.61 * (1 + rng.uniform(-strain, strain)), cubic=True).repeat(repeat)
        atoms.positions += rng.normal(0, rattle_A, atoms.positions.shape)
        atoms.calc = EMT()
        atoms.get_potential_energy()
        out.append(Label.from_atoms(atoms, label_id=k))
    return out
