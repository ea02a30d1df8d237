"""The property HMC's exactness rests on: the proposal map (r, p) -> (r', p') of velocity Verlet is
time-reversible (flip the momenta, integrate again: back at the start) and volume-preserving (the
Jacobian determinant of the map is 1). Checked with the network the ML-MD worker runs and with an
ASE calculator, on small systems, the Jacobian by central finite differences."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.lj import LennardJones
from ase.md.velocitydistribution import thermalize_momenta

from slhmc.clients.mlmd import model_forces
from slhmc.hmc import velocity_verlet
from slhmc.potential.fast import FastPotential
from slhmc.validation import calculator_forces

STEPS, TIMESTEP_FS = 12, 2.0


def lj_cluster() -> tuple[Atoms, object]:
    """Five argon atoms, all within the cutoff of each other all along (a smooth potential)."""
    atoms = Atoms("Ar5", positions=[[0, 0, 0], [3.8, 0, 0], [0, 3.8, 0], [0, 0, 3.8], [2.2, 2.2, 2.2]])
    atoms.rattle(0.1, seed=1)
    return atoms, calculator_forces(atoms, LennardJones(sigma=3.4, epsilon=0.0104, rc=12.0))


@pytest.fixture(params=["network (FastPotential, Cu/Ni cell)", "ASE Lennard-Jones (Ar5 cluster)"])
def system(request, model, cu_alloy):
    if request.param.startswith("network"):
        atoms = cu_alloy
        forces = model_forces(FastPotential(model, skin=0.2), atoms.numbers, atoms.cell.array, atoms.pbc)
        temperature = 1500.0
    else:
        atoms, forces = lj_cluster()
        temperature = 150.0
    thermalize_momenta(atoms, temperature, rng=np.random.default_rng(5))
    return atoms, forces


def test_momentum_flip_returns_to_the_start(system):
    atoms, forces = system
    masses, p0 = atoms.get_masses(), atoms.get_momenta()
    out = velocity_verlet(forces, atoms.positions, p0, masses, STEPS, TIMESTEP_FS)
    assert np.abs(out.positions - atoms.positions).max() > 0.05  # it went somewhere
    back = velocity_verlet(forces, out.positions, -out.momenta, masses, STEPS, TIMESTEP_FS)
    np.testing.assert_allclose(back.positions, atoms.positions, rtol=0, atol=1e-10)  # Å
    np.testing.assert_allclose(-back.momenta, p0, rtol=0, atol=1e-10 * np.abs(p0).max())
    assert abs(back.e_end - out.e_start) < 1e-9


def test_jacobian_determinant_is_one(system):
    atoms, forces = system
    masses = atoms.get_masses()
    r0, p0 = atoms.positions.copy(), atoms.get_momenta()
    n = r0.size
    scale = np.concatenate([np.full(n, 1.0), np.full(n, np.abs(p0).mean())])  # Å, and a typical momentum
    z0 = np.concatenate([r0.ravel(), p0.ravel()])

    def flow(z: np.ndarray) -> np.ndarray:
        out = velocity_verlet(forces, z[:n].reshape(-1, 3), z[n:].reshape(-1, 3), masses, STEPS, TIMESTEP_FS)
        return np.concatenate([out.positions.ravel(), out.momenta.ravel()])

    h = 1e-5
    jac = np.empty((2 * n, 2 * n))
    for k in range(2 * n):  # in units scaled per block, so that the matrix is well conditioned
        dz = np.zeros(2 * n)
        dz[k] = h * scale[k]
        jac[:, k] = (flow(z0 + dz) - flow(z0 - dz)) / (2 * h) / scale
    sign, logdet = np.linalg.slogdet(jac)
    assert sign > 0
    assert abs(logdet) < 1e-6, f"log det J = {logdet:.2e}"
    assert np.abs(jac - np.eye(2 * n)).max() > 0.1  # the map is not trivially the identity
    # and a wrong integrator is caught: scaling the momenta by 1.001 each step changes the volume
    def damped(z: np.ndarray) -> np.ndarray:
        return flow(z) * np.concatenate([np.ones(n), np.full(n, 1.001)])

    jac_bad = np.empty_like(jac)
    for k in range(2 * n):
        dz = np.zeros(2 * n)
        dz[k] = h * scale[k]
        jac_bad[:, k] = (damped(z0 + dz) - damped(z0 - dz)) / (2 * h) / scale
    assert abs(np.linalg.slogdet(jac_bad)[1]) > 1e-3
