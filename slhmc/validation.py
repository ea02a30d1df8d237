"""An exact reference sampler: plain hybrid Monte Carlo with ASE calculators, in one process.

With the same calculator for the trajectory and the acceptance this is textbook HMC, the exact
reference SLHMC is checked against; with a cheap calculator for the trajectory it is the SLHMC
algorithm without workers or sockets. It is built from the pieces the server and the ML-MD worker
use (:mod:`slhmc.hmc`), so that a test can swap one rule (``delta_h``) and show that the
statistics catch it.

``plain_npt`` does the same in the isothermal–isobaric ensemble: fixed-cell HMC trials plus cell
trials (:mod:`slhmc.hmc.npt`), either reference-only or driven by a cheap proposal and corrected
exactly by the reference.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
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


def calculator_cell_energy(atoms: Atoms, calc: Calculator) -> hmc.CellEnergy:
    """(positions Å, cell Å) -> potential energy (eV) of ``atoms``' species with ``calc``."""
    work = atoms.copy()
    work.calc = calc

    def energy(positions: np.ndarray, cell: np.ndarray) -> float:
        work.set_cell(cell, scale_atoms=False)
        work.positions = positions
        return float(work.get_potential_energy())

    return energy


def calculator_forces_in_cell(atoms: Atoms, calc: Calculator) -> Callable[[np.ndarray], hmc.EnergyForces]:
    """cell -> the fixed-cell energy-and-forces function velocity Verlet takes (eV, eV/Å)."""
    work = atoms.copy()
    work.calc = calc

    def in_cell(cell: np.ndarray) -> hmc.EnergyForces:
        def energy_forces(positions: np.ndarray) -> tuple[float, np.ndarray]:
            work.set_cell(cell, scale_atoms=False)
            work.positions = positions
            return float(work.get_potential_energy()), work.get_forces().copy()

        return energy_forces

    return in_cell


def plain_npt(
    atoms: Atoms,
    reference: Calculator,
    temperature_K: float,
    pressure_GPa: float,
    trials: int,
    md_steps: int,
    timestep_fs: float,
    volume_step: float,
    seed: int = 0,
    cell: str = "isotropic",
    cell_probability: float = 0.5,
    inner_steps: int = 1,
    proposal: Calculator | None = None,
    delta_h: Callable[[float, float, float, float], float] = hmc.delta_h,
    cell_log_acceptance: Callable[[hmc.CellMove, float, float, float, float], float] = hmc.cell_log_acceptance,
) -> list[dict]:
    """Exact isothermal–isobaric sampling of exp(-β[E_ref + PV]) in one process (:mod:`slhmc.hmc.npt`).

    Each trial is, with probability ``cell_probability`` (drawn from the trial's stream), a cell
    trial — ``inner_steps`` Metropolis cell moves (``cell``: "isotropic", steps of ln V within
    ±``volume_step``; "anisotropic", the six cell coordinates within ±``volume_step``/3) — and
    otherwise a fixed-cell HMC trial of ``md_steps`` steps of ``timestep_fs`` fs.

    ``proposal`` None: the reference-only sampler, every move tested with the reference energy
    directly. ``proposal`` given: the self-learning sampler — the proposal calculator drives the
    trajectories and the inner cell chain, and the reference corrects each end point exactly
    (ΔH for a trajectory, exp(-β[(E_ref - E_ML)' - (E_ref - E_ML)]) for a cell trial).
    ``pressure_GPa`` in GPa; the anisotropic sampler first brings ``atoms`` to the lower-triangular
    cell (``standard_cell``). ``delta_h`` and ``cell_log_acceptance`` may be swapped by a test that
    shows the statistics catch a wrong rule.

    Returns one record per trial: ``trial``, ``kind`` ("position" or "cell"), ``accepted``,
    ``e_chain`` (eV), ``volume`` (Å³), ``cell`` (Å), ``positions`` (Å), ``inner_accepted``.
    """
    if cell not in hmc.npt.CELL_MODES:
        raise ValueError(f"cell must be one of {hmc.npt.CELL_MODES}, not {cell!r}")
    if cell == "anisotropic":
        atoms = hmc.standard_cell(atoms)
    masses = atoms.get_masses()
    pressure = hmc.pressure_eV_per_A3(pressure_GPa)
    ref_energy = calculator_cell_energy(atoms, reference)
    ref_in_cell = calculator_forces_in_cell(atoms, reference)
    md_in_cell = ref_in_cell if proposal is None else calculator_forces_in_cell(atoms, proposal)
    inner_energy = ref_energy if proposal is None else calculator_cell_energy(atoms, proposal)
    state = hmc.ChainState(0, 0, atoms.positions.copy(), atoms.cell.array.copy(),
                           ref_energy(atoms.positions, atoms.cell.array))
    records = []
    for t in range(trials):
        draws = hmc.npt_draw(seed, t, masses, temperature_K, cell_probability, inner_steps, cell, volume_step)
        inner_accepted = 0
        if draws.cell_trial:
            e_start = state.energy if proposal is None else inner_energy(state.positions, state.cell)
            end = hmc.inner_cell_chain(inner_energy, state.positions, state.cell, e_start, draws.cell, cell,
                                       temperature_K, pressure, rule=cell_log_acceptance)
            inner_accepted = end.accepted
            # reference-only: the inner chain's energies are the reference's, and the correction is 1
            e_ref_end = end.energy if proposal is None or end.accepted == 0 else ref_energy(end.positions, end.cell)
            accepted = hmc.cell_step(state, end, e_ref_end, e_start, temperature_K, draws.hmc.uniform).accepted
        else:
            md = md_in_cell(state.cell)
            out = hmc.velocity_verlet(md, state.positions, draws.hmc.momenta, masses, md_steps, timestep_fs)
            e_new = out.e_end if proposal is None else ref_in_cell(state.cell)(out.positions)[0]
            accepted = hmc.metropolis_step(state, draws.hmc, out.positions, out.momenta, e_new, masses,
                                           temperature_K, delta_h=delta_h).accepted
        records.append({"trial": t, "kind": "cell" if draws.cell_trial else "position", "accepted": accepted,
                        "e_chain": state.energy, "volume": hmc.npt.volume(state.cell), "cell": state.cell,
                        "positions": state.positions, "inner_accepted": inner_accepted})
    return records


class StrainedEMT(Calculator):
    """EMT evaluated on the structure scaled by 1 + ``strain`` (cell and positions): a deliberately
    poor proposal for NPT tests, whose lattice constant is EMT's divided by 1 + ``strain``, with
    E(r, h) = E_EMT((1 + strain) r, (1 + strain) h) and forces (1 + strain) F_EMT (eV, eV/Å)."""

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, strain: float = 0.01, **kwargs) -> None:
        super().__init__(**kwargs)
        self.strain = strain
        self._emt = EMT()

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        scaled = self.atoms.copy()
        scaled.set_cell(self.atoms.cell.array * (1 + self.strain), scale_atoms=True)
        scaled.calc = self._emt
        energy = float(scaled.get_potential_energy())
        self.results = {"energy": energy, "free_energy": energy, "forces": scaled.get_forces() * (1 + self.strain)}


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
