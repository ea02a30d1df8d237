"""The Behler–Parrinello potential is right: forces and stress are exact derivatives of the
energy, the energy has the symmetries of physics, and periodic images are counted correctly."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from ase.neighborlist import neighbor_list
from scipy.spatial.transform import Rotation

from slhmc.potential import load_calculator
from slhmc.potential.neighbors import neighbor_pairs
from slhmc.potential.serialization import load_model, model_from_bytes, model_to_bytes, save_model


def energy(model, atoms) -> float:
    return model.evaluate(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc).energy


def test_forces_are_minus_the_finite_difference_gradient(model, cu_alloy):
    ev = model.evaluate(cu_alloy.numbers, cu_alloy.positions, cu_alloy.cell.array, cu_alloy.pbc)
    assert np.abs(ev.forces).max() > 1e-3  # a random network has real forces: the test can fail
    h = 1e-5
    for atom in (0, 3, 6):
        for k in range(3):
            plus, minus = cu_alloy.copy(), cu_alloy.copy()
            plus.positions[atom, k] += h
            minus.positions[atom, k] -= h
            fd = -(energy(model, plus) - energy(model, minus)) / (2 * h)
            assert ev.forces[atom, k] == pytest.approx(fd, abs=1e-7)


def test_stress_is_the_strain_derivative(model, cu_alloy):
    ev = model.evaluate(cu_alloy.numbers, cu_alloy.positions, cu_alloy.cell.array, cu_alloy.pbc, stress=True)
    volume = cu_alloy.get_volume()
    h = 1e-6
    for a, b in [(0, 0), (1, 1), (2, 2), (0, 1), (1, 2)]:
        eps = np.zeros((3, 3))
        eps[a, b] = eps[b, a] = h / (1 if a == b else 2)
        e = []
        for sign in (1, -1):
            strained = cu_alloy.copy()
            strained.set_cell(cu_alloy.cell.array @ (np.eye(3) + sign * eps), scale_atoms=True)
            e.append(energy(model, strained))
        assert ev.stress[a, b] == pytest.approx((e[0] - e[1]) / (2 * h) / volume, abs=1e-7)


def test_invariant_under_rotation_translation_and_permutation(model, cu_alloy):
    e0 = energy(model, cu_alloy)
    forces0 = model.evaluate(cu_alloy.numbers, cu_alloy.positions, cu_alloy.cell.array, cu_alloy.pbc).forces

    moved = cu_alloy.copy()
    moved.positions += [0.37, -1.2, 2.9]  # translation, some atoms leave the cell: images handle it
    assert energy(model, moved) == pytest.approx(e0, abs=1e-10)

    rot = Rotation.from_euler("zyx", [31, -47, 12], degrees=True).as_matrix()
    rotated = cu_alloy.copy()
    rotated.set_cell(cu_alloy.cell.array @ rot.T)
    rotated.positions = cu_alloy.positions @ rot.T
    ev = model.evaluate(rotated.numbers, rotated.positions, rotated.cell.array, rotated.pbc)
    assert ev.energy == pytest.approx(e0, abs=1e-10)
    np.testing.assert_allclose(ev.forces, forces0 @ rot.T, atol=1e-10)  # forces rotate with the atoms

    order = np.random.default_rng(1).permutation(len(cu_alloy))
    permuted = cu_alloy[order]
    ev = model.evaluate(permuted.numbers, permuted.positions, permuted.cell.array, permuted.pbc)
    assert ev.energy == pytest.approx(e0, abs=1e-10)
    np.testing.assert_allclose(ev.forces, forces0[order], atol=1e-10)

    # and a genuinely different structure does change the energy
    swapped = cu_alloy.copy()
    swapped.numbers[[0, 1]] = swapped.numbers[[1, 0]]
    assert abs(energy(model, swapped) - e0) > 1e-6


def test_small_cell_equals_its_supercell_per_atom(model):
    """The 4-atom cell is 3.6 Å across, shorter than twice the 4.5 Å cutoff: each neighbour
    appears through several images, and the energy per atom must equal the supercell's."""
    small = bulk("Cu", "fcc", a=3.61, cubic=True)
    small.numbers[0] = 28
    small.positions[1] += [0.05, -0.03, 0.02]
    e_small = energy(model, small) / len(small)
    for reps in [(2, 2, 2), (3, 1, 2)]:
        big = small.repeat(reps)
        assert energy(model, big) / len(big) == pytest.approx(e_small, abs=1e-10)
    # the primitive one-atom cell (0.0 Å shorter than everything) too
    prim = bulk("Cu", "fcc", a=3.61)
    assert energy(model, prim) == pytest.approx(energy(model, prim.repeat((2, 3, 2))) / 12, abs=1e-10)


def test_cluster_without_periodicity(model):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.pbc = False
    atoms.cell = np.zeros((3, 3))
    ev = model.evaluate(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc)
    np.testing.assert_allclose(ev.forces.sum(axis=0), 0.0, atol=1e-12)  # no external force


def test_vesin_pairs_equal_ase_pairs(cu_alloy):
    for atoms in (cu_alloy, cu_alloy.repeat((1, 2, 1))):
        i, j, S = neighbor_pairs(atoms.positions, atoms.cell.array, atoms.pbc, 4.5)
        ai, aj, aS = neighbor_list("ijS", atoms, 4.5)
        ours = sorted(zip(i.tolist(), j.tolist(), map(tuple, S.tolist()), strict=True))
        theirs = sorted(zip(ai.tolist(), aj.tolist(), map(tuple, aS.tolist()), strict=True))
        assert ours == theirs and len(ours) > 100


def test_serialization_round_trip_and_calculator(model, cu_alloy, tmp_path):
    data = model_to_bytes(model, {"version": 3})
    assert b"pickle" not in data[:200]
    again, info = model_from_bytes(data)
    assert info == {"version": 3}
    assert energy(again, cu_alloy) == energy(model, cu_alloy)

    run = tmp_path / "run"
    (run / "models").mkdir(parents=True)
    save_model(run / "models" / "model_0000.safetensors", model, {"version": 0})
    model.ref_energy.data += 1.0  # a different "newer" model
    save_model(run / "models" / "model_0001.safetensors", model, {"version": 1})
    calc = load_calculator(run)
    assert calc.info["version"] == 1
    atoms = cu_alloy.copy()
    atoms.calc = calc
    assert atoms.get_potential_energy() == pytest.approx(energy(model, cu_alloy))
    assert atoms.get_forces().shape == (8, 3) and atoms.get_stress().shape == (6,)
    first, _ = load_model(run / "models" / "model_0000.safetensors")
    assert energy(first, cu_alloy) == pytest.approx(energy(model, cu_alloy) - 8.0)


def test_refuses_foreign_bytes_and_unknown_elements(model):
    with pytest.raises(ValueError):
        model_from_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(ValueError, match="Z=26"):
        model.evaluate(np.array([26, 29]), np.zeros((2, 3)) + [[0, 0, 0], [2, 0, 0]], np.zeros((3, 3)),
                       np.zeros(3, bool))


@pytest.mark.parametrize("reps", [(1, 1, 1), (1, 2, 1)])
def test_symmetry_functions_equal_dscribe_acsf(cu_alloy, reps):
    """G2/G4 against dscribe's ACSF (an independent C++ implementation) with the same parameters.

    dscribe has one cutoff for all functions, so the angular cutoff is set equal to the radial one.
    Its layout is, per element, [G1, G2...], then per element pair [G4...]; ours drops G1.
    """
    import torch
    from dscribe.descriptors import ACSF

    from slhmc.potential.descriptors import DescriptorSpec
    from slhmc.potential.network import BPNN

    atoms = cu_alloy.repeat(reps)
    spec = DescriptorSpec.default([28, 29], cutoff=4.5, angular_cutoff=4.5, n_radial=5)
    acsf = ACSF(r_cut=4.5, g2_params=[list(p) for p in spec.radial], g4_params=[list(p) for p in spec.angular],
                species=[28, 29], periodic=True)
    theirs = acsf.create(atoms)
    n_rad = len(spec.radial)
    g2_cu_ni = [theirs[:, 1 + e * (1 + n_rad) : (e + 1) * (1 + n_rad)] for e in range(2)]  # drop each G1
    theirs = np.concatenate([*g2_cu_ni, theirs[:, 2 * (1 + n_rad) :]], 1)
    m = BPNN(spec, (15, 15), "tanh")
    ours = m.features(m.species_index(atoms.numbers), torch.tensor(atoms.positions), torch.tensor(atoms.cell.array),
                      m.pairs(atoms.positions, atoms.cell.array, atoms.pbc)).numpy()
    assert ours.shape == theirs.shape and np.abs(ours).max() > 0.1
    np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)
