"""Isothermal–isobaric (NPT) moves: cell moves with scaled coordinates, their Jacobians, the exact
acceptance and the self-learning (SLMC) correction of an ML-driven inner cell chain.

Units: eV, Å, K; pressure in eV/Å³ here (configs give GPa: :func:`pressure_eV_per_A3`). Cells are
ASE's: rows are the lattice vectors, positions r = s h with s the scaled (fractional) coordinates.

The target is π(r, h) ∝ exp(−β[E(r, h) + P V(h)]) on Cartesian positions r (each atom in the cell)
and the cell h, with V = det h. Both cell moves keep s fixed, so r′ = r h⁻¹ h′, and both are exact
with the same rule

    α = min(1, exp(−β[ΔE + P ΔV] + (N + 1) ln(V′/V)))

(:func:`cell_log_acceptance`):

- **isotropic** (:func:`isotropic_move`): h′ = (V′/V)^(1/3) h with ln V′ = ln V + δ, δ ~ U(−Δ, Δ).
  The target is a density on (r, V) (measure dr dV, the textbook NPT ensemble). At fixed δ the map
  (r, V) → (r′, V′) has Jacobian (V′/V)^N from the 3N scaled coordinates times V′/V from stepping
  ln V rather than V: (V′/V)^(N+1). The step δ and its reverse −δ are equally likely.
- **anisotropic** (:func:`anisotropic_move`): the cell in lower-triangular form (a along x, b in the
  xy plane, positive diagonal; :func:`standard_cell`) in the coordinates
  θ = (ln h11, ln h22, ln h33, τ21, τ31, τ32), τ21 = h21/h11, τ31 = h31/h11, τ32 = h32/h22 (the tilt
  factors), stepped by θ′ = θ + δ, δ uniform in a box. The cell measure is μ = V dθ: the volume
  measure dV of the isotropic ensemble times a uniform measure on the shape (log aspect ratios and
  tilt factors), restricted to the reduced tilts |τ| ≤ 1/2 (a fundamental domain of the lattice
  vectors' integer recombinations, which would otherwise count each periodic system infinitely
  often; a step out of it is rejected). With respect to Lebesgue dh (six entries) μ has density
  1/(h11² h22); the map (r, h) → (r′, h′) has Jacobian (V′/V)^N · V′h11′²h22′/(V h11² h22); the
  product is again (V′/V)^(N+1). An isotropic step is the anisotropic one with equal diagonal
  steps and no tilt, so the two ensembles agree on the volume measure.

Self-learning correction (:func:`inner_cell_chain`, :func:`cell_step`): a kernel K that is in
detailed balance with π_ML ∝ exp(−β[E_ML + PV]) (N + 1 measure factors included) — here M
Metropolis cell steps with the ML energy and the rule above, K = k^M, a power of one reversible
kernel and so reversible — proposes x → y; accepting y with

    min(1, exp(−β[(E_ref − E_ML)(y) − (E_ref − E_ML)(x)]))

(:func:`slmc_log_acceptance`) is Metropolis–Hastings for π_ref, because π_ML(x) K(x, y) =
π_ML(y) K(y, x) turns the Hastings ratio π_ref(y) K(y, x) / π_ref(x) K(x, y) into
[π_ref/π_ML](y) / [π_ref/π_ML](x): the PV and Jacobian terms cancel. A sequence of *different*
kernels would be reversible only if palindromic; M equal steps are. Positions move by ordinary
fixed-cell HMC trials (:mod:`slhmc.hmc.chain`), and each trial is a cell trial with a fixed
probability, drawn from its own (seed, trial) stream (:func:`npt_draw`): a state-independent
mixture of kernels that each leave π invariant leaves it invariant.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from ase import Atoms, units

from .chain import ChainState
from .draws import TrialDraws, trial_random

ISOTROPIC = "isotropic"
ANISOTROPIC = "anisotropic"
CELL_MODES = (ISOTROPIC, ANISOTROPIC)
TILT_LIMIT = 0.5  # |τ| ≤ 1/2: the reduced (fundamental) domain of the tilt factors

# (positions (N, 3) Å, cell (3, 3) Å) -> potential energy, eV
CellEnergy = Callable[[np.ndarray, np.ndarray], float]


def pressure_eV_per_A3(pressure_GPa: float) -> float:
    """GPa -> eV/Å³ (1 GPa = 6.2415e-3 eV/Å³)."""
    return float(pressure_GPa) * units.GPa


def volume(cell: np.ndarray) -> float:
    """|det h|, Å³."""
    return float(abs(np.linalg.det(cell)))


@dataclass(frozen=True)
class CellMove:
    """A proposed cell move with the atoms' scaled coordinates kept: r′ = r h⁻¹ h′ (Å).

    ``log_det`` is ln|det ∂(r′, c′)/∂(r, c)| at fixed step, c the Lebesgue cell coordinates the
    target density is written in (V for the isotropic move, the six entries of the lower-triangular
    h for the anisotropic one); ``log_measure_ratio`` is ln of the cell measure's density ratio
    (new over old) in those coordinates. Their sum, :attr:`log_jacobian`, is (N + 1) ln(V′/V) for
    both moves."""

    positions: np.ndarray  # Å, (N, 3)
    cell: np.ndarray  # Å, (3, 3)
    volume_old: float  # Å³
    volume_new: float  # Å³
    log_det: float
    log_measure_ratio: float
    in_domain: bool = True  # False: outside the reduced tilts, the target is zero there

    @property
    def log_jacobian(self) -> float:
        return self.log_det + self.log_measure_ratio


def isotropic_move(positions: np.ndarray, cell: np.ndarray, delta_ln_volume: float) -> CellMove:
    """Scale the cell and the positions by exp(δ/3): ln V′ = ln V + δ, shape and s fixed."""
    factor = math.exp(delta_ln_volume / 3.0)
    v_old = volume(cell)
    n = len(positions)
    return CellMove(positions * factor, cell * factor, v_old, v_old * math.exp(delta_ln_volume),
                    (n + 1) * delta_ln_volume, 0.0)


def is_lower_triangular(cell: np.ndarray, tol: float = 1e-9) -> bool:
    scale = max(float(np.abs(cell).max()), 1.0)
    return (abs(cell[0, 1]) <= tol * scale and abs(cell[0, 2]) <= tol * scale and abs(cell[1, 2]) <= tol * scale
            and bool(np.all(np.diag(cell) > 0)))


def cell_coordinates(cell: np.ndarray) -> np.ndarray:
    """θ = (ln h11, ln h22, ln h33, τ21, τ31, τ32) of a lower-triangular cell with positive diagonal."""
    if not is_lower_triangular(cell):
        raise ValueError("anisotropic cell moves need a lower-triangular cell with positive diagonal "
                         "(a along x, b in the xy plane, right-handed): use slhmc.hmc.npt.standard_cell")
    h = cell
    return np.array([math.log(h[0, 0]), math.log(h[1, 1]), math.log(h[2, 2]),
                     h[1, 0] / h[0, 0], h[2, 0] / h[0, 0], h[2, 1] / h[1, 1]])


def cell_from_coordinates(theta: np.ndarray) -> np.ndarray:
    """The lower-triangular cell (Å) of θ = (ln h11, ln h22, ln h33, τ21, τ31, τ32)."""
    h11, h22, h33 = math.exp(theta[0]), math.exp(theta[1]), math.exp(theta[2])
    return np.array([[h11, 0.0, 0.0], [theta[3] * h11, h22, 0.0], [theta[4] * h11, theta[5] * h22, h33]])


def log_cell_measure(cell: np.ndarray) -> float:
    """ln of the anisotropic cell measure's density with respect to Lebesgue dh (six entries):
    μ = V dθ = dh / (h11² h22)."""
    return -(2.0 * math.log(cell[0, 0]) + math.log(cell[1, 1]))


def anisotropic_move(positions: np.ndarray, cell: np.ndarray, delta_theta: np.ndarray) -> CellMove:
    """θ′ = θ + δ for the lower-triangular ``cell``; positions follow with s fixed."""
    theta_new = cell_coordinates(cell) + np.asarray(delta_theta, dtype=np.float64)
    new = cell_from_coordinates(theta_new)
    n = len(positions)
    v_old, v_new = volume(cell), volume(new)
    # Jacobian in (r, h): N atoms each mapped by h⁻¹h′ (det V′/V), times the cell part at fixed δ:
    # dh = V h11² h22 dθ, and θ is only translated
    log_cell_part = (math.log(v_new) + 2 * math.log(new[0, 0]) + math.log(new[1, 1])
                     - math.log(v_old) - 2 * math.log(cell[0, 0]) - math.log(cell[1, 1]))
    return CellMove(positions @ np.linalg.solve(cell, new), new, v_old, v_new,
                    n * math.log(v_new / v_old) + log_cell_part, log_cell_measure(new) - log_cell_measure(cell),
                    bool(np.all(np.abs(theta_new[3:]) <= TILT_LIMIT)))


def cell_move(mode: str, positions: np.ndarray, cell: np.ndarray, step: np.ndarray) -> CellMove:
    """The move of ``mode`` ("isotropic": ``step`` is (δ ln V,); "anisotropic": ``step`` is δθ, six)."""
    if mode == ISOTROPIC:
        return isotropic_move(positions, cell, float(step[0]))
    if mode == ANISOTROPIC:
        return anisotropic_move(positions, cell, step)
    raise ValueError(f"cell mode must be one of {CELL_MODES}, not {mode!r}")


def standard_cell(atoms: Atoms) -> Atoms:
    """A copy of ``atoms`` rotated so that its cell is lower-triangular with positive diagonal and
    its tilt factors reduced to |τ| ≤ 1/2 by integer recombinations of the lattice vectors (the
    same periodic system; Cartesian positions only rotated). Needs a right-handed cell."""
    out = atoms.copy()
    if out.cell.handedness < 0:
        raise ValueError("the cell is left-handed; reorder its vectors first")
    rcell, q = out.cell.standard_form()
    h = rcell.array.copy()
    out.positions = out.positions @ q.T
    h[1] -= round(h[1, 0] / h[0, 0]) * h[0]  # b -= k a: τ21
    h[2] -= round(h[2, 1] / h[1, 1]) * h[1]  # c -= k b: τ32 (changes τ31)
    h[2] -= round(h[2, 0] / h[0, 0]) * h[0]  # c -= k a: τ31
    out.set_cell(h, scale_atoms=False)
    return out


def cell_log_acceptance(move: CellMove, e_old: float, e_new: float, temperature_K: float,
                        pressure: float) -> float:
    """ln of the Metropolis ratio of a cell move for exp(−β[E + PV]) (``pressure`` in eV/Å³, energies
    in eV): −β[ΔE + P ΔV] + (N + 1) ln(V′/V), the last term being ``move.log_jacobian``; −inf outside
    the reduced tilts."""
    if not move.in_domain:
        return -math.inf
    beta = 1.0 / (units.kB * temperature_K)
    return -beta * ((e_new - e_old) + pressure * (move.volume_new - move.volume_old)) + move.log_jacobian


def slmc_log_acceptance(e_ref_old: float, e_ml_old: float, e_ref_new: float, e_ml_new: float,
                        temperature_K: float) -> float:
    """ln of the self-learning correction, −β[(E_ref − E_ML)(y) − (E_ref − E_ML)(x)] (eV, K)."""
    return -((e_ref_new - e_ml_new) - (e_ref_old - e_ml_old)) / (units.kB * temperature_K)


def accept_log(log_ratio: float, uniform: float) -> bool:
    """Metropolis on a log ratio: accept when ln α ≥ 0 or u < exp(ln α)."""
    if log_ratio >= 0:
        return True
    return uniform < math.exp(log_ratio)


def step_dimension(mode: str) -> int:
    return 1 if mode == ISOTROPIC else 6


@dataclass(frozen=True)
class CellDraws:
    """The random numbers of one cell trial's inner chain: M steps and M Metropolis uniforms."""

    steps: np.ndarray  # (M, 1) δ ln V, or (M, 6) δθ
    uniforms: np.ndarray  # (M,)


@dataclass(frozen=True)
class NPTDraws:
    hmc: TrialDraws  # momenta and uniform exactly as slhmc.hmc.draw; the uniform is the SLMC coin of a cell trial
    cell_trial: bool
    cell: CellDraws


def npt_draw(seed: int, trial: int, masses: np.ndarray, temperature_K: float, cell_probability: float,
             inner_steps: int, mode: str, volume_step: float) -> NPTDraws:
    """Trial t's randomness from the (seed, t) stream: first momenta and uniform exactly as
    :func:`slhmc.hmc.draw` (a position trial of an NPT chain draws what the NVT trial t draws), then
    the trial-kind uniform (a cell trial when below ``cell_probability``), then the inner chain's
    steps and uniforms — always the same count of numbers, whatever is used.

    ``volume_step``: half-width Δ of the uniform step in ln V (isotropic); anisotropic, each of the
    six θ components steps uniformly within ±Δ/3 (a strain of that size per axis).
    """
    rng = trial_random(seed, trial)
    sigma = np.sqrt(masses * units.kB * temperature_K)[:, None]
    momenta = rng.standard_normal((len(masses), 3)) * sigma
    uniform = float(rng.random())
    kind = float(rng.random())
    half_width = volume_step if mode == ISOTROPIC else volume_step / 3.0
    steps = rng.uniform(-half_width, half_width, (inner_steps, step_dimension(mode)))
    uniforms = rng.random(inner_steps)
    return NPTDraws(TrialDraws(momenta, uniform), kind < cell_probability, CellDraws(steps, uniforms))


@dataclass(frozen=True)
class InnerChain:
    """The end point of an inner cell chain and its energy under the driving potential (eV)."""

    positions: np.ndarray  # Å
    cell: np.ndarray  # Å
    energy: float  # eV
    accepted: int  # inner steps accepted, of len(draws.uniforms)


def inner_cell_chain(
    energy: CellEnergy,
    positions: np.ndarray,
    cell: np.ndarray,
    e_start: float,
    draws: CellDraws,
    mode: str,
    temperature_K: float,
    pressure: float,
    rule: Callable[[CellMove, float, float, float, float], float] = cell_log_acceptance,
) -> InnerChain:
    """M Metropolis cell steps for exp(−β[E + PV]) with ``energy`` (the ML potential, or the reference
    itself in a reference-only sampler), from (``positions``, ``cell``) whose energy is ``e_start``
    (eV; ``pressure`` eV/Å³). ``rule`` may be swapped by a test that shows the statistics catch a
    wrong one. Steps out of the reduced tilts are rejected without an energy call."""
    r, h, e = positions, cell, e_start
    accepted = 0
    for step, u in zip(draws.steps, draws.uniforms, strict=True):
        move = cell_move(mode, r, h, step)
        if not move.in_domain:
            continue
        e_new = energy(move.positions, move.cell)
        if accept_log(rule(move, e, e_new, temperature_K, pressure), float(u)):
            r, h, e = move.positions, move.cell, e_new
            accepted += 1
    return InnerChain(r, h, e, accepted)


@dataclass(frozen=True)
class CellStep:
    """The outcome of one cell trial's SLMC test (energies eV, volumes Å³)."""

    accepted: bool  # the chain moved: the inner chain moved and its end point passed the correction
    log_acceptance: float  # ln of the correction's ratio (0 when the inner chain did not move)
    volume_old: float
    volume_new: float  # of the proposal
    e_old: float  # the chain's reference energy before the step


def cell_step(state: ChainState, proposal: InnerChain, e_ref_end: float, e_ml_start: float, temperature_K: float,
              uniform: float) -> CellStep:
    """Test the inner chain's end point with the SLMC correction against the chain state and advance
    ``state`` in place (trial count; positions, cell and energy on acceptance). ``e_ml_start`` is the
    inner chain's energy of the chain state; ``e_ref_end`` the reference energy of its end point
    (not used, and need not be computed, when the inner chain did not move)."""
    if state.energy is None:
        raise ValueError("the chain's start point has no reference energy yet")
    e_old = state.energy
    v_old, v_new = volume(state.cell), volume(proposal.cell)
    if proposal.accepted == 0:  # the inner chain stayed: the proposal is the state itself
        state.trial += 1
        return CellStep(False, 0.0, v_old, v_new, e_old)
    log_a = slmc_log_acceptance(e_old, e_ml_start, e_ref_end, proposal.energy, temperature_K)
    accepted = accept_log(log_a, uniform)
    if accepted:
        state.positions, state.cell, state.energy = proposal.positions, proposal.cell, e_ref_end
        state.accepted += 1
    state.trial += 1
    return CellStep(accepted, log_a, v_old, v_new, e_old)


ADAPT_TARGET = (0.3, 0.5)  # inner-step acceptance the volume step is steered into while adapted


class VolumeStep:
    """The cell-step half-width (:func:`npt_draw`'s ``volume_step``) of each trial: adapted in blocks
    of ``block`` trials before ``adapt_until``, frozen after.

    Block b's step is block b−1's, scaled by exp(2(a − 0.4)) (within ×0.5..×2) where a is the inner
    acceptance of the cell trials of block b − 2 — outside 0.3..0.5 only — so it is a function of
    trials that the chain finished before any trial of block b could start (a pre-fetching pipeline
    is at most ``block`` trials ahead of the chain): the step of every trial is the same for any
    number of DFT workers, and after a resume. The chain is exact from the first block after
    ``adapt_until``; the trials before it are equilibration.
    """

    def __init__(self, start: float, adapt_until: int, block: int) -> None:
        self.adapt_until = adapt_until
        self.block = block
        self.steps = [float(start)]  # by block
        self.counts: dict[int, list[int]] = {}  # block -> [inner steps accepted, inner steps]

    def for_trial(self, trial: int) -> float:
        b = trial // self.block
        while len(self.steps) <= b:
            self.steps.append(self._next(len(self.steps)))
        return self.steps[b]

    def _next(self, b: int) -> float:
        step = self.steps[b - 1]
        accepted, total = self.counts.get(b - 2, (0, 0))
        if b * self.block >= self.adapt_until or total == 0:
            return step
        rate = accepted / total
        if ADAPT_TARGET[0] <= rate <= ADAPT_TARGET[1]:
            return step
        return step * min(2.0, max(0.5, math.exp(2.0 * (rate - 0.4))))

    def record(self, trial: int, accepted: int, steps: int) -> None:
        """A finished cell trial (in chain order) with ``accepted`` of its ``steps`` inner steps."""
        count = self.counts.setdefault(trial // self.block, [0, 0])
        count[0] += accepted
        count[1] += steps

    def checkpoint_fields(self) -> dict:
        return {"steps": self.steps, "counts": {str(b): c for b, c in self.counts.items()}}

    def restore(self, fields: dict) -> None:
        self.steps = [float(s) for s in fields["steps"]]
        self.counts = {int(b): [int(c[0]), int(c[1])] for b, c in fields["counts"].items()}
