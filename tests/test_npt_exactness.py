"""The isothermal–isobaric moves (:mod:`slhmc.hmc.npt`) and their exactness, measured.

1. The cell moves: Jacobians by finite differences, reversibility, the random stream (a position
   trial draws what the NVT trial draws), the standard cell.
2. Toy systems whose NPT distribution is known in closed form, sampled by the self-learning
   sampler with a poor proposal: an ideal gas (V ~ Gamma(N + 1, k_BT/P)) with isotropic moves, and
   a cell-only energy in ln h_ii with anisotropic moves (ln h_ii Gaussian, shifted by (N + 1)/βk;
   tilt factors uniform on [−1/2, 1/2]). The measure term dropped, N in place of N + 1, or the
   anisotropic cell measure left out, fails.
3. Cu32 (fcc, EMT) at 600 K, at 0 and 5 GPa: ⟨V⟩ and var(V) of the self-learning sampler with a
   poor frozen proposal (EMT on a 0.5 % compressed lattice) equal those of the reference-only exact
   sampler; with the (N + 1) ln V term dropped the comparison fails; ⟨V⟩ falls with pressure; and
   the reference-only chain obeys the virial identity ⟨V (P_conf − P)⟩ = −(N + 1) k_BT, which
   depends on no sampler code (the dropped term fails it). About three minutes on one core.
4. The same comparison through the real server and workers (`slhmc run`: ML-MD worker, EMT DFT
   workers, a trainer; a network fitted on a few bootstrap labels and then frozen), at 0 GPa with
   one DFT worker and at 5 GPa with two pre-fetching ones.

Agreement is judged as in ``test_exactness.py``: z = difference / error with τ-corrected error
bars (:func:`slhmc.statistics.estimate`); |z| < 4 passes.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from ase import Atoms, units
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from ase.io import write

from slhmc import hmc
from slhmc.hmc import npt
from slhmc.statistics import estimate
from slhmc.validation import StrainedEMT, plain_npt

from .runs import run_frozen

Z_PASS = 4.0


def dropped_measure(move: hmc.CellMove, e_old: float, e_new: float, temperature_K: float, pressure: float) -> float:
    """The wrong rule: no (N + 1) ln(V′/V) term."""
    return hmc.cell_log_acceptance(move, e_old, e_new, temperature_K, pressure) - move.log_jacobian


def n_not_n_plus_1(move: hmc.CellMove, e_old: float, e_new: float, temperature_K: float, pressure: float) -> float:
    """The wrong rule: N ln(V′/V), the ln V sampling's +1 forgotten."""
    return (hmc.cell_log_acceptance(move, e_old, e_new, temperature_K, pressure)
            - math.log(move.volume_new / move.volume_old))


def z_score(a: np.ndarray, b: np.ndarray | float, exact_error: float = 0.0) -> float:
    """z of mean(a) − mean(b) (b: a series, or an exact number)."""
    x = estimate(a)
    if isinstance(b, float):
        return (x.mean - b) / math.hypot(x.error, exact_error)
    y = estimate(b)
    return (x.mean - y.mean) / math.hypot(x.error, y.error)


# ---------------------------------------------------------------- the moves


def numerical_log_det(f, x: np.ndarray, h: float = 1e-6) -> float:
    jac = np.empty((len(x), len(x)))
    for i in range(len(x)):
        dx = np.zeros_like(x)
        dx[i] = h
        jac[:, i] = (f(x + dx) - f(x - dx)) / (2 * h)
    sign, log_det = np.linalg.slogdet(jac)
    assert sign > 0
    return float(log_det)


def triclinic(n: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    cell = np.array([[4.1, 0.0, 0.0], [0.7, 3.8, 0.0], [-0.9, 1.1, 4.4]])
    return rng.uniform(0, 1, (n, 3)) @ cell, cell


def test_isotropic_move_jacobian_by_finite_differences():
    """In (r, V) the move at fixed δ has Jacobian (V′/V)^(N+1): N from the scaled coordinates, 1 from ln V."""
    positions, cell = triclinic()
    n, delta = len(positions), 0.07
    shape = cell / npt.volume(cell) ** (1 / 3)

    def move(x: np.ndarray) -> np.ndarray:
        m = hmc.isotropic_move(x[:-1].reshape(n, 3), shape * x[-1] ** (1 / 3), delta)
        return np.concatenate([m.positions.ravel(), [m.volume_new]])

    x0 = np.concatenate([positions.ravel(), [npt.volume(cell)]])
    m = hmc.isotropic_move(positions, cell, delta)
    assert numerical_log_det(move, x0) == pytest.approx(m.log_det, abs=1e-6)
    assert m.log_jacobian == pytest.approx((n + 1) * math.log(m.volume_new / m.volume_old), abs=1e-12)
    assert m.volume_new == pytest.approx(npt.volume(m.cell), rel=1e-12)


def test_anisotropic_move_jacobian_by_finite_differences():
    """In (r, six entries of the lower-triangular h) the move at fixed δθ has the Jacobian it states,
    and with the cell measure dh/(h11² h22) the total is (V′/V)^(N+1), as for the isotropic move."""
    positions, cell = triclinic()
    n = len(positions)
    delta = np.array([0.03, -0.05, 0.02, 0.04, -0.06, 0.05])
    lower = np.tril_indices(3)

    def move(x: np.ndarray) -> np.ndarray:
        h = np.zeros((3, 3))
        h[lower] = x[3 * n:]
        m = hmc.anisotropic_move(x[: 3 * n].reshape(n, 3), h, delta)
        return np.concatenate([m.positions.ravel(), m.cell[lower]])

    m = hmc.anisotropic_move(positions, cell, delta)
    assert numerical_log_det(move, np.concatenate([positions.ravel(), cell[lower]])) == pytest.approx(m.log_det,
                                                                                                      abs=1e-6)
    assert m.log_jacobian == pytest.approx((n + 1) * math.log(m.volume_new / m.volume_old), abs=1e-12)
    assert m.log_measure_ratio == pytest.approx(npt.log_cell_measure(m.cell) - npt.log_cell_measure(cell))


@pytest.mark.parametrize("mode", ["isotropic", "anisotropic"])
def test_moves_keep_scaled_coordinates_and_are_reversed_by_the_opposite_step(mode):
    positions, cell = triclinic(5, seed=1)
    step = np.array([0.05]) if mode == "isotropic" else np.array([0.03, -0.02, 0.04, 0.1, -0.05, 0.07])
    m = hmc.cell_move(mode, positions, cell, step)
    np.testing.assert_allclose(np.linalg.solve(m.cell.T, m.positions.T).T, np.linalg.solve(cell.T, positions.T).T,
                               atol=1e-12)
    back = hmc.cell_move(mode, m.positions, m.cell, -step)
    np.testing.assert_allclose(back.positions, positions, atol=1e-12)
    np.testing.assert_allclose(back.cell, cell, atol=1e-12)
    assert back.log_jacobian == pytest.approx(-m.log_jacobian, abs=1e-12)


def test_steps_out_of_the_reduced_tilts_are_refused():
    positions, cell = triclinic()  # τ21 = 0.17
    assert hmc.anisotropic_move(positions, cell, [0, 0, 0, 0.3, 0, 0]).in_domain
    m = hmc.anisotropic_move(positions, cell, [0, 0, 0, 0.4, 0, 0])
    assert not m.in_domain
    assert hmc.cell_log_acceptance(m, 0.0, -1.0, 600.0, 0.0) == -math.inf


def test_npt_draws_are_the_nvt_draws_first():
    """A position trial of an NPT chain draws the momenta and uniform of the NVT trial; the step
    distribution is symmetric (the reverse step is as likely), and the trial kind has its probability."""
    masses = np.array([63.5, 63.5, 12.0])
    kinds, steps = [], []
    for t in range(4000):
        d = hmc.npt_draw(7, t, masses, 600.0, 0.3, 2, "anisotropic", 0.06)
        if t < 3:
            nvt = hmc.draw(7, t, masses, 600.0)
            np.testing.assert_array_equal(d.hmc.momenta, nvt.momenta)
            assert d.hmc.uniform == nvt.uniform
            again = hmc.npt_draw(7, t, masses, 600.0, 0.3, 2, "anisotropic", 0.06)
            np.testing.assert_array_equal(again.cell.steps, d.cell.steps)
        kinds.append(d.cell_trial)
        steps.append(d.cell.steps)
    steps = np.concatenate(steps)
    assert steps.shape[1] == 6 and np.abs(steps).max() <= 0.02
    assert abs(np.mean(kinds) - 0.3) < 4 * math.sqrt(0.3 * 0.7 / 4000)
    assert np.all(np.abs(steps.mean(axis=0)) < 4 * 0.02 / math.sqrt(3 * len(steps)))


def test_standard_cell_is_the_same_periodic_system():
    atoms = bulk("Cu", "fcc", a=3.6).repeat((2, 1, 1))  # primitive fcc: a skewed, non-triangular cell
    atoms.set_cell(atoms.cell.array @ np.array([[1, 0, 0], [1, 1, 0], [0, 2, 1]]).T, scale_atoms=False)
    atoms.rattle(0.05, seed=2)
    std = hmc.standard_cell(atoms)
    assert npt.is_lower_triangular(std.cell.array)
    assert np.all(np.abs(npt.cell_coordinates(std.cell.array)[3:]) <= 0.5 + 1e-12)
    assert std.cell.volume == pytest.approx(atoms.cell.volume)
    atoms.calc, std.calc = EMT(), EMT()
    assert std.get_potential_energy() == pytest.approx(atoms.get_potential_energy(), abs=1e-9)


# ---------------------------------------------------------------- toy systems with exact answers


class CellOnly(Calculator):
    """An energy of the cell alone (eV), zero forces: an ideal gas in a cell-dependent potential."""

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, energy, **kwargs) -> None:
        super().__init__(**kwargs)
        self.energy_of_cell = energy

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        e = float(self.energy_of_cell(self.atoms.cell.array))
        self.results = {"energy": e, "free_energy": e, "forces": np.zeros((len(self.atoms), 3))}


T_TOY = 600.0
KT = units.kB * T_TOY


def gas(cell: np.ndarray) -> Atoms:
    return Atoms("Ar2", scaled_positions=[[0.1, 0.2, 0.3], [0.6, 0.5, 0.9]], cell=cell, pbc=True)


@pytest.mark.parametrize("rule", ["exact", "dropped", "N_not_N+1"])
def test_ideal_gas_volume_is_gamma_distributed(rule):
    """Ideal gas of N = 2: V ~ Gamma(N + 1, k_BT/P), sampled by the self-learning sampler whose
    proposal feels 1.4 times the pressure (E_ML = 0.4 P V), corrected by the reference (E = 0).
    Checked: ⟨V⟩, ⟨ln V⟩ = ψ(N + 1) + ln(k_BT/P) and var(ln V) = ψ′(N + 1) (ln V has light tails,
    so short chains estimate its spread reliably; V's own variance comes out low in short chains)."""
    n, mean_v = 2, 60.0
    pressure = (n + 1) * KT / mean_v  # eV/Å³
    scale = KT / pressure
    digamma = -np.euler_gamma + sum(1 / k for k in range(1, n + 1))
    trigamma = math.pi**2 / 6 - sum(1 / k**2 for k in range(1, n + 1))
    rules = {"exact": hmc.cell_log_acceptance, "dropped": dropped_measure, "N_not_N+1": n_not_n_plus_1}
    records = plain_npt(gas(np.diag([4.0, 3.5, 4.2])), CellOnly(lambda h: 0.0), T_TOY, pressure / units.GPa,
                        trials=2000, md_steps=2, timestep_fs=5.0, volume_step=0.9, seed=4, cell_probability=0.8,
                        inner_steps=3, proposal=CellOnly(lambda h: 0.4 * pressure * abs(np.linalg.det(h))),
                        cell_log_acceptance=rules[rule])
    v = np.array([r["volume"] for r in records[100:]])
    ln_v = np.log(v)
    z = {"mean V": z_score(v, mean_v), "mean ln V": z_score(ln_v, digamma + math.log(scale)),
         "var ln V": z_score((ln_v - ln_v.mean()) ** 2, trigamma)}
    print(f"ideal gas, {rule}: <V> {v.mean():.2f} Å³ (exact {mean_v}), var(V) {v.var():.0f} (exact "
          f"{(n + 1) * scale**2:.0f}); " + ", ".join(f"z({k}) {x:.1f}" for k, x in z.items()))
    if rule == "exact":
        assert all(abs(x) < Z_PASS for x in z.values())
    else:
        assert max(abs(x) for x in z.values()) > 2 * Z_PASS


BETA_K = 4.0  # stiffness of the toy cell energy, in units of k_BT
LN_A = math.log(4.0)


def toy_cell_energy(cell: np.ndarray) -> float:
    """(k/2) Σ (ln h_ii − ln 4 Å)², eV: at P = 0, ln h_ii ~ Normal(ln 4 + (N + 1)/βk, 1/βk), tilts uniform."""
    return 0.5 * BETA_K * KT * float(np.sum((np.log(np.diag(cell)) - LN_A) ** 2))


def poor_toy_cell_energy(cell: np.ndarray) -> float:
    """Softer, shifted, and pulling the tilts towards zero."""
    tilts = npt.cell_coordinates(cell)[3:]
    ln_h = np.log(np.diag(cell))
    return 0.35 * BETA_K * KT * float(np.sum((ln_h - LN_A - 0.15) ** 2)) + 2 * KT * float(tilts @ tilts)


def lebesgue_cell_measure(move: hmc.CellMove, e_old: float, e_new: float, temperature_K: float,
                          pressure: float) -> float:
    """The wrong rule: the anisotropic move's Jacobian without the cell measure's density (dh, not V dθ)."""
    return hmc.cell_log_acceptance(move, e_old, e_new, temperature_K, pressure) - move.log_measure_ratio


@pytest.mark.parametrize("rule", ["exact", "lebesgue_measure"])
def test_anisotropic_toy_cell_distribution_is_exact(rule):
    """ln h_ii ~ Normal(ln 4 Å + (N + 1)/βk, 1/βk) and tilts uniform on [−1/2, 1/2], from the
    self-learning sampler with a softer, shifted, tilt-pulling proposal; with Lebesgue dh as the cell
    measure ln h11 would be shifted by 2/βk."""
    n = 2
    records = plain_npt(gas(np.diag([4.0, 4.0, 4.0])), CellOnly(toy_cell_energy), T_TOY, 0.0, trials=1500,
                        md_steps=2, timestep_fs=5.0, volume_step=0.9, seed=2, cell="anisotropic",
                        cell_probability=1.0, inner_steps=10, proposal=CellOnly(poor_toy_cell_energy),
                        cell_log_acceptance=lebesgue_cell_measure if rule != "exact" else hmc.cell_log_acceptance)
    theta = np.array([npt.cell_coordinates(r["cell"]) for r in records[50:]])
    ln_h = LN_A + (n + 1) / BETA_K
    z = {"ln h11": z_score(theta[:, 0], ln_h), "ln h22": z_score(theta[:, 1], ln_h),
         "ln h33": z_score(theta[:, 2], ln_h),
         "var ln h11": z_score((theta[:, 0] - theta[:, 0].mean()) ** 2, 1 / BETA_K),
         "tau21": z_score(theta[:, 3], 0.0), "var tau31": z_score(theta[:, 4] ** 2, 1 / 12),
         "var tau32": z_score(theta[:, 5] ** 2, 1 / 12)}
    print(f"anisotropic toy, {rule}: " + ", ".join(f"z({k}) {v:.1f}" for k, v in z.items()))
    if rule == "exact":
        assert all(abs(v) < Z_PASS for v in z.values())
    else:
        assert abs(z["ln h11"]) > 2 * Z_PASS


# ---------------------------------------------------------------- Cu with EMT

T_CU = 600.0
PRESSURES_GPA = (0.0, 5.0)
SAMPLER = {"md_steps": 4, "timestep_fs": 7.0, "volume_step": 0.045}
DROP = 100  # equilibration trials left out of every average


def copper() -> Atoms:
    return bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))


def volumes(records: list[dict]) -> np.ndarray:
    return np.array([r["volume"] for r in records[DROP:]])


def compare(v: np.ndarray, v_ref: np.ndarray, label: str) -> dict[str, float]:
    z = {"mean": z_score(v, v_ref), "variance": z_score((v - v.mean()) ** 2, (v_ref - v_ref.mean()) ** 2)}
    x, y = estimate(v), estimate(v_ref)
    print(f"{label}: <V> {x.mean:.2f} ± {x.error:.2f} Å³ (τ {x.tau:.0f}) vs reference {y.mean:.2f} ± {y.error:.2f} Å³ "
          f"(τ {y.tau:.0f}), z {z['mean']:.1f}; var(V) {v.var():.1f} vs {v_ref.var():.1f} Å⁶, z {z['variance']:.1f}")
    return z


def virial_deviation(records: list[dict], pressure_GPa: float, every: int = 5) -> np.ndarray:
    """V (P_conf − P) + (N + 1) k_BT per sampled state (eV), P_conf = −tr(σ)/3 from EMT's stress.
    Zero on average in the NPT ensemble with the V^N dV measure: the average of the ln V derivative
    of ln[V^(N+1) exp(−β(E + PV))] vanishes, and −∂E/∂ln V at fixed scaled coordinates is V P_conf."""
    atoms = copper()
    atoms.calc = EMT()
    out = []
    for r in records[DROP::every]:
        atoms.set_cell(r["cell"], scale_atoms=False)
        atoms.positions = r["positions"]
        p_conf = -float(np.trace(atoms.get_stress(voigt=False))) / 3
        out.append(r["volume"] * (p_conf - hmc.pressure_eV_per_A3(pressure_GPa)) + (len(atoms) + 1) * units.kB * T_CU)
    return np.array(out)


@pytest.fixture(scope="module")
def reference_runs() -> dict[float, list[dict]]:
    """The reference-only exact sampler: every move tested with EMT itself."""
    return {p: plain_npt(copper(), EMT(), T_CU, p, trials=2500 if p == 0 else 2000, seed=11, cell_probability=0.8,
                         **SAMPLER)
            for p in PRESSURES_GPA}


@pytest.mark.slow
@pytest.mark.parametrize("pressure_GPa", [5.0])
def test_copper_volume_matches_the_reference_sampler(reference_runs, pressure_GPa):
    """The self-learning sampler with EMT on a 0.5 % compressed lattice as its frozen proposal: the
    proposal's own ensemble has a volume about 1.5 % (one standard deviation of V) too small. At one
    pressure only: the server runs the same correction at both (below)."""
    records = plain_npt(copper(), EMT(), T_CU, pressure_GPa, trials=1500, seed=12, cell_probability=0.7,
                        proposal=StrainedEMT(0.005), **SAMPLER)
    cell = [r for r in records if r["kind"] == "cell"]
    position = [r for r in records if r["kind"] == "position"]
    print(f"self-learning NPT at {pressure_GPa} GPa: acceptance cell {np.mean([r['accepted'] for r in cell]):.2f}, "
          f"position {np.mean([r['accepted'] for r in position]):.2f}")
    z = compare(volumes(records), volumes(reference_runs[pressure_GPa]), f"Cu32 {pressure_GPa} GPa")
    assert abs(z["mean"]) < Z_PASS and abs(z["variance"]) < Z_PASS


@pytest.mark.slow
def test_copper_check_catches_the_dropped_measure_term(reference_runs):
    """Without (N + 1) ln(V′/V) the chain samples as if the pressure were (N + 1) k_BT/V ≈ 0.7 GPa
    higher: ⟨V⟩ about 2.5 Å³ (half a standard deviation of V) too small, and the virial identity off
    by (N + 1) k_BT = 1.7 eV."""
    records = plain_npt(copper(), EMT(), T_CU, 0.0, trials=2500, seed=13, cell_probability=0.8,
                        cell_log_acceptance=dropped_measure, **SAMPLER)
    z = compare(volumes(records), volumes(reference_runs[0.0]), "Cu32 0 GPa, (N + 1) ln V dropped")
    d = virial_deviation(records, 0.0)
    z_virial = z_score(d, 0.0)
    print(f"virial identity with the term dropped: {d.mean():.3f} eV, z {z_virial:.1f}")
    assert abs(z["mean"]) > Z_PASS, "the volume comparison missed the dropped measure term"
    assert abs(z_virial) > Z_PASS, "the virial identity missed the dropped measure term"


@pytest.mark.slow
def test_copper_volume_falls_with_pressure(reference_runs):
    v0, v5 = (estimate(volumes(reference_runs[p])) for p in PRESSURES_GPA)
    print(f"Cu32 <V>: {v0.mean:.2f} ± {v0.error:.2f} Å³ at 0 GPa, {v5.mean:.2f} ± {v5.error:.2f} Å³ at 5 GPa")
    assert v5.mean + Z_PASS * math.hypot(v0.error, v5.error) < v0.mean


@pytest.mark.slow
@pytest.mark.parametrize("pressure_GPa", PRESSURES_GPA)
def test_reference_sampler_obeys_the_virial_identity(reference_runs, pressure_GPa):
    """An absolute check of the measure: no second sampler, EMT's stress instead of its energy."""
    d = virial_deviation(reference_runs[pressure_GPa], pressure_GPa)
    z = z_score(d, 0.0)
    print(f"virial identity at {pressure_GPa} GPa: <V(P_conf - P)> + (N+1) kT = {d.mean():.3f} eV, z {z:.1f}")
    assert abs(z) < Z_PASS


NPT_CONFIG = """
[system]
structure = "cu32.xyz"
temperature = {temperature}
pressure = {pressure}
[reference]
calculator = "emt"
[hmc]
trials = {trials}
md_steps = {md_steps}
timestep = {timestep_fs}
seed = {seed}
volume_probability = 0.7
volume_inner_steps = 3
volume_step = {volume_step}
volume_adapt_until = 0
[potential]
cutoff = 4.5
hidden = [8]
[training]
bootstrap = 6
bootstrap_displacement = 0.1
bootstrap_strain = 0.005
interval = 0
max_steps = 5
[workers]
dft = {dft}
"""


@pytest.mark.slow
@pytest.mark.parametrize("pressure_GPa, dft", [(0.0, 1), (5.0, 2)])
def test_copper_volume_through_the_server_matches_the_reference_sampler(tmp_path, reference_runs, pressure_GPa, dft):
    """`slhmc run` in NPT with a poor frozen network (6 bootstrap labels strained by at most 0.5 %, so
    that its E(V) is poorly known, and 5 L-BFGS steps): ⟨V⟩ and var(V) equal the reference-only
    sampler's."""
    write(tmp_path / "cu32.xyz", copper())
    (tmp_path / "config.toml").write_text(NPT_CONFIG.format(temperature=T_CU, pressure=pressure_GPa, trials=1400,
                                                            seed=5, dft=dft, **SAMPLER))
    trials = run_frozen(tmp_path / "config.toml", tmp_path / "run")
    cell = [t for t in trials if t["kind"] == "cell"]
    position = [t for t in trials if t["kind"] == "position"]
    moved = [t for t in cell if t["cell_steps_accepted"] > 0]
    acceptance = np.mean([t["accepted"] for t in moved])
    print(f"server NPT at {pressure_GPa} GPa, {dft} DFT worker(s): acceptance of moved cell trials "
          f"{acceptance:.2f}, position trials {np.mean([t['accepted'] for t in position]):.2f}")
    assert acceptance < 0.97, "the network is too good for this test to show the correction at work"
    z = compare(volumes(trials), volumes(reference_runs[pressure_GPa]), f"server Cu32 {pressure_GPa} GPa")
    assert abs(z["mean"]) < Z_PASS and abs(z["variance"]) < Z_PASS


def test_anisotropic_cell_trials_through_the_server(tmp_path):
    """`hmc.cell = "anisotropic"` on a primitive (triclinic) fcc cell: the start structure is
    rotated to the lower-triangular form, the shape changes (not only the volume), every recorded
    cell stays lower-triangular with reduced tilts, chain.extxyz holds the same cells, and
    `slhmc analyze` reports the lattice."""
    import json
    import subprocess
    import sys

    from ase.io import read

    from .runs import env

    atoms = bulk("Cu", "fcc", a=3.61).repeat((2, 2, 2))
    atoms.rattle(0.02, seed=1)
    write(tmp_path / "cu8.xyz", atoms)
    config = NPT_CONFIG.format(temperature=600.0, pressure=1.0, trials=80, seed=3, dft=1, md_steps=5,
                               timestep_fs=4.0, volume_step=0.03)
    config = config.replace('structure = "cu32.xyz"', 'structure = "cu8.xyz"').replace(
        "volume_probability = 0.7", 'cell = "anisotropic"\nvolume_probability = 0.5')
    (tmp_path / "config.toml").write_text(config)
    trials = run_frozen(tmp_path / "config.toml", tmp_path / "run")
    cells = [np.array(t["cell"]) for t in trials]
    for h in cells:
        assert h[0, 1] == h[0, 2] == h[1, 2] == 0.0 and np.all(np.diag(h) > 0)
        assert abs(h[1, 0] / h[0, 0]) <= 0.5 and abs(h[2, 0] / h[0, 0]) <= 0.5 and abs(h[2, 1] / h[1, 1]) <= 0.5
    shapes = {tuple(np.round(np.diag(h) / np.linalg.det(h) ** (1 / 3), 6)) for h in cells}
    assert len(shapes) > 3, "the cell's shape never changed"
    assert [t["volume"] for t in trials] == pytest.approx([abs(np.linalg.det(h)) for h in cells])
    frames = read(tmp_path / "run" / "chain.extxyz", index=":")
    np.testing.assert_allclose(frames[-1].cell.array, cells[-1], atol=1e-12)
    proc = subprocess.run([sys.executable, "-m", "slhmc", "analyze", str(tmp_path / "run")], env=env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    npt_summary = json.loads((tmp_path / "run" / "summary.json").read_text())["npt"]
    assert npt_summary["cell"] == "anisotropic" and npt_summary["lattice"]["a_A"]["mean"] > 0
