"""The sampled ensemble is the reference one, whatever the network: measured, with error bars.

1. A Morse dimer with a deliberately poor, frozen network (6 bootstrap labels, no refits), run
   through the real server and worker processes: the bond-length distribution must equal
   r² exp(-V(r)/kT), with V from the reference calculator itself, integrated numerically.
2. The same check must *fail* for wrong rules — a test that cannot fail proves nothing:
   (a) ΔH from potential energies only (no kinetic energies) at a large timestep, and
   (b) a failed reference call turned into a rejection (the reference "fails" on half of the
   stretched geometries). Both run in the in-process sampler built from the server's own chain
   functions and the ML-MD worker's integrator, with only that one rule swapped; the control run
   with the exact rule passes the same check.
3. A Cu crystal (EMT) at 1000 K, where anharmonicity shows: ⟨E_pot⟩ and its variance from SLHMC
   with a poor frozen network equal those of plain HMC with EMT forces; the potential-only ΔH
   rule fails the same comparison.

Agreement is judged by z = |difference| / error with error bars that include the integrated
autocorrelation time; |z| < 4 passes (a false alarm about once in 16000 per comparison).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase import Atoms, units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.morse import MorsePotential
from ase.io import read, write

from slhmc import hmc
from slhmc.statistics import estimate
from slhmc.validation import plain_hmc

from .runs import run_frozen

MORSE = {"epsilon": 1.0, "r0": 2.2, "rho0": 6.0}  # eV, Å; well depth 1 eV, curvature 15 eV/Å²
T_DIMER = 1000.0  # K: kT = 0.086 eV, bond-length spread ~0.08 Å, dissociation ~never within a run
Z_PASS = 4.0


def exact_bond_moments(temperature_K: float) -> tuple[float, float]:
    """⟨r⟩ and var(r) of p(r) ∝ r² exp(-V(r)/kT), V from ASE's Morse calculator on a dimer."""
    r = np.linspace(1.6, 3.6, 4001)
    dimer = Atoms("Cu2", positions=[[0, 0, 0], [2.2, 0, 0]])
    dimer.calc = MorsePotential(**MORSE)
    v = []
    for x in r:
        dimer.positions[1, 0] = x
        v.append(dimer.get_potential_energy())
    w = r**2 * np.exp(-(np.array(v) - min(v)) / (units.kB * temperature_K))
    w /= np.trapezoid(w, r)
    mean = np.trapezoid(r * w, r)
    return mean, np.trapezoid((r - mean) ** 2 * w, r)


def z_scores(bond_lengths: np.ndarray) -> tuple[float, float]:
    """z of the sample mean and variance of r against the exact ones."""
    mean, var = exact_bond_moments(T_DIMER)
    m = estimate(bond_lengths)
    v = estimate((bond_lengths - bond_lengths.mean()) ** 2)
    return (m.mean - mean) / m.error, (v.mean - var) / v.error


def bond_lengths(positions: list[np.ndarray]) -> np.ndarray:
    return np.array([np.linalg.norm(p[1] - p[0]) for p in positions])


def dimer() -> Atoms:
    return Atoms("Cu2", positions=[[0, 0, 0], [2.2, 0.0, 0.0]], pbc=False)


def test_dimer_distribution_is_exact_with_a_poor_frozen_network(tmp_path):
    write(tmp_path / "dimer.xyz", dimer())
    (tmp_path / "config.toml").write_text(f"""
[system]
structure = "dimer.xyz"
temperature = {T_DIMER}
[reference]
calculator = "morse"
options = {json.dumps(MORSE).replace('"', "").replace(":", " =")}
[hmc]
trials = 2000
md_steps = 10
timestep = 4.0
seed = 3
[potential]
cutoff = 4.0
hidden = [6]
[training]
bootstrap = 6
bootstrap_displacement = 0.1
interval = 0
max_steps = 5
""")
    run = tmp_path / "run"
    trials = run_frozen(tmp_path / "config.toml", run)
    acceptance = np.mean([t["accepted"] for t in trials])
    assert acceptance < 0.95, f"the network is too good for this test (acceptance {acceptance:.3f})"
    r = bond_lengths([a.positions for a in read(run / "chain.extxyz", index="50:")])
    z_mean, z_var = z_scores(r)
    print(f"dimer via workers: acceptance {acceptance:.3f}, z(mean) {z_mean:.2f}, z(var) {z_var:.2f}")
    assert abs(z_mean) < Z_PASS and abs(z_var) < Z_PASS


class FailsWhenStretched(MorsePotential):
    """Morse whose "SCF" fails (energy +inf) on half of the geometries stretched past r0 + 0.05 Å."""

    def calculate(self, atoms=None, properties=("energy",), system_changes=()):
        super().calculate(atoms, properties, system_changes)
        r = atoms.get_distance(0, 1)
        if r > MORSE["r0"] + 0.05 and int(r * 1e7) % 2:
            self.results["energy"] = np.inf


def potential_only(k_old: float, e_old: float, k_new: float, e_new: float) -> float:
    return e_new - e_old  # the bug: no kinetic energies


@pytest.mark.parametrize("rule", ["exact", "potential_only_delta_h", "failure_as_rejection"])
def test_dimer_check_catches_wrong_rules(rule):
    reference = FailsWhenStretched(**MORSE) if rule == "failure_as_rejection" else MorsePotential(**MORSE)
    records = plain_hmc(dimer(), reference, T_DIMER, trials=3000, md_steps=4, timestep_fs=8.0, seed=5,
                        proposal=MorsePotential(**MORSE),
                        delta_h=potential_only if rule == "potential_only_delta_h" else hmc.delta_h)
    z_mean, z_var = z_scores(bond_lengths([r["positions"] for r in records[50:]]))
    print(f"{rule}: z(mean) {z_mean:.2f}, z(var) {z_var:.2f}")
    if rule == "exact":
        assert abs(z_mean) < Z_PASS and abs(z_var) < Z_PASS
    else:
        assert max(abs(z_mean), abs(z_var)) > Z_PASS, f"the check missed the wrong rule {rule}"


T_CRYSTAL = 1000.0  # K, 3/4 of EMT copper's melting point: anharmonic


def crystal():
    return bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 1, 1))


@pytest.fixture(scope="module")
def crystal_reference() -> np.ndarray:
    """E_pot samples of exact plain HMC with EMT forces (first 100 trials dropped)."""
    records = plain_hmc(crystal(), EMT(), T_CRYSTAL, trials=5000, md_steps=8, timestep_fs=5.0, seed=10)
    return np.array([r["e_chain"] for r in records[100:]])


def crystal_z(e: np.ndarray, e_ref: np.ndarray) -> dict[str, float]:
    out = {}
    for name, a, b in [("mean", e, e_ref), ("variance", (e - e.mean()) ** 2, (e_ref - e_ref.mean()) ** 2)]:
        x, y = estimate(a), estimate(b)
        out[name] = (x.mean - y.mean) / np.hypot(x.error, y.error)
        print(f"crystal {name}: {x.mean:.5f} ± {x.error:.5f} vs plain HMC {y.mean:.5f} ± {y.error:.5f}, "
              f"z {out[name]:.2f}")
    return out


def test_crystal_energy_and_fluctuation_match_plain_hmc(tmp_path, crystal_reference):
    T = T_CRYSTAL
    start = crystal()
    write(tmp_path / "cu8.xyz", start)
    (tmp_path / "config.toml").write_text(f"""
[system]
structure = "cu8.xyz"
temperature = {T}
[reference]
calculator = "emt"
[hmc]
trials = 2500
md_steps = 8
timestep = 5.0
seed = 9
[potential]
cutoff = 4.5
hidden = [8]
[training]
bootstrap = 4
bootstrap_displacement = 0.1
interval = 0
max_steps = 5
""")
    run = tmp_path / "run"
    trials = run_frozen(tmp_path / "config.toml", run)
    acceptance = np.mean([t["accepted"] for t in trials])
    assert acceptance < 0.95
    e_slhmc = np.array([t["e_chain"] for t in trials[100:]])
    print(f"crystal via workers: acceptance {acceptance:.3f}")
    z = crystal_z(e_slhmc, crystal_reference)
    assert abs(z["mean"]) < Z_PASS and abs(z["variance"]) < Z_PASS


def test_crystal_check_catches_potential_only_rule(crystal_reference):
    records = plain_hmc(crystal(), EMT(), T_CRYSTAL, trials=1500, md_steps=8, timestep_fs=10.0, seed=12,
                        delta_h=potential_only)
    z = crystal_z(np.array([r["e_chain"] for r in records[100:]]), crystal_reference)
    assert max(abs(z["mean"]), abs(z["variance"])) > Z_PASS, "the crystal check missed the wrong rule"
