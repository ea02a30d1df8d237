"""The fast MD path (slhmc.potential.fast) computes the same energy function as BPNN.evaluate, and its
forces and stress are that function's gradient: equal to autograd's to 1e-9 relative at every step of
short MD runs in which its Verlet neighbour list is both reused and rebuilt — for one element (Cu) and
two (SiO2), in cells large and small (an atom seeing its own periodic images), and for descriptor sets
beyond the default (non-integer zeta, an unsorted angular list). The ML-MD trajectory it drives is
time-reversible, as the HMC proposal must be."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.io import read
from ase.md.velocitydistribution import thermalize_momenta
from ase.spacegroup import crystal

from slhmc.clients.mlmd import model_forces
from slhmc.hmc import velocity_verlet
from slhmc.potential.calculator import BPNNCalculator
from slhmc.potential.descriptors import DescriptorSpec
from slhmc.potential.fast import FastPotential
from slhmc.potential.neighbors import VerletList, neighbor_pairs
from slhmc.potential.network import BPNN

ROOT = Path(__file__).parent.parent
RTOL = 1e-9


def quartz9() -> Atoms:
    """The 9-atom alpha-quartz cell (4.9 x 4.9 x 5.4 Å): every atom sees its own images."""
    return crystal(["Si", "O"], basis=[(0.4697, 0, 2 / 3), (0.4135, 0.2669, 0.7858)], spacegroup=154,
                   cellpar=[4.916, 4.916, 5.405, 90, 90, 120])


def cu(reps: tuple[int, int, int]) -> Atoms:
    return bulk("Cu", "fcc", a=3.61, cubic=True).repeat(reps)


def random_model(atoms: Atoms, spec: DescriptorSpec, seed: int = 0) -> BPNN:
    """A random network standardised on the structure's own features, so that it is not saturated and
    its forces are of a realistic size (and differ between elements and features)."""
    torch.manual_seed(seed)
    model = BPNN(spec, hidden=(12, 10), activation="tanh")
    species = model.species_index(atoms.numbers)
    feats = model.features(species, torch.tensor(atoms.positions), torch.tensor(atoms.cell.array),
                           model.pairs(atoms.positions, atoms.cell.array, atoms.pbc))
    with torch.no_grad():
        for k in range(spec.n_elements):
            sel = feats[species == k]
            model.feature_mean[k] = sel.mean(0)
            model.feature_std[k] = sel.std(0) + 0.1 * sel.abs().mean(0) + 1e-3
        model.ref_energy.uniform_(-3.0, -1.0)
    return model


CUSTOM_SPEC = dict(  # 3 etas, a non-integer zeta, angular functions not in sorted order
    radial=((0.5, 1.5), (1.0, 2.5), (2.0, 3.0), (0.3, 4.0)),
    angular=((0.05, 2.0, 1.0), (0.005, 1.0, -1.0), (0.01, 2.5, 1.0), (0.05, 1.0, 1.0), (0.005, 4.0, -1.0)),
)

CASES = {
    # name: (structure, cutoff, angular cutoff, custom spec?, temperature K, skin Å)
    "Cu32, 6.0/4.5 (own images within the radial cutoff)": (lambda: cu((2, 2, 2)), 6.0, 4.5, False, 3000, 0.15),
    "Cu4 cubic cell 3.6 Å, 6.0/4.5": (lambda: cu((1, 1, 1)), 6.0, 4.5, False, 3000, 0.15),
    "Cu108, 4.0/3.5 (no self-images)": (lambda: cu((3, 3, 3)), 4.0, 3.5, False, 3000, 0.15),
    "SiO2 quartz 9 atoms, 6.0/4.5": (quartz9, 6.0, 4.5, False, 2000, 0.15),
    "SiO2 quartz 72 atoms, 6.0/4.5": (lambda: read(ROOT / "examples/sio2_quartz/quartz72.extxyz"), 6.0, 4.5, False,
                                      2000, 0.15),
    "SiO2 quartz 9 atoms, custom descriptor": (quartz9, 5.0, 4.0, True, 2000, 0.15),
}


def make_case(name: str) -> tuple[Atoms, BPNN, float, float]:
    build, rc, rca, custom, temperature, skin = CASES[name]
    atoms = build()
    atoms.rattle(0.05, seed=7)
    elements = sorted(set(atoms.numbers))
    spec = DescriptorSpec.default(elements, rc, rca)
    if custom:
        spec = DescriptorSpec(spec.elements, rc, rca, CUSTOM_SPEC["radial"], CUSTOM_SPEC["angular"])
    return atoms, random_model(atoms, spec), temperature, skin


def assert_same(fast, plain, what: str) -> None:
    """Fast vs autograd, relative to the largest component."""
    assert fast.energy == pytest.approx(plain.energy, rel=RTOL, abs=1e-12), what
    scale = np.abs(plain.forces).max()
    assert scale > 1e-3, what  # real forces: the comparison can fail
    np.testing.assert_allclose(fast.forces, plain.forces, rtol=0, atol=RTOL * scale, err_msg=what)
    if plain.stress is not None:
        np.testing.assert_allclose(fast.stress, plain.stress, rtol=0, atol=RTOL * np.abs(plain.stress).max(),
                                   err_msg=what)
    assert fast.extrapolating_atoms == plain.extrapolating_atoms, what
    assert fast.extrapolating_per_element == plain.extrapolating_per_element, what


@pytest.mark.parametrize("name", list(CASES))
def test_fast_forces_equal_autograd_along_md_with_list_reuse_and_rebuilds(name):
    atoms, model, temperature, skin = make_case(name)
    fast = FastPotential(model, skin=skin)
    assert fast.compiled
    species = model.species_index(atoms.numbers)
    g_plain = model.features(species, torch.tensor(atoms.positions), torch.tensor(atoms.cell.array),
                             model.pairs(atoms.positions, atoms.cell.array, atoms.pbc)).numpy()
    g_fast = fast.features(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc)
    np.testing.assert_allclose(g_fast, g_plain, rtol=1e-12, atol=1e-14)

    thermalize_momenta(atoms, temperature, rng=np.random.default_rng(1))
    steps, checked = 24, []
    numbers, cell, pbc = atoms.numbers, atoms.cell.array, atoms.pbc

    def both(positions: np.ndarray) -> tuple[float, np.ndarray]:
        ev = fast.evaluate(numbers, positions, cell, pbc, stress=True)
        assert_same(ev, model.evaluate(numbers, positions, cell, pbc, stress=True), f"{name}, call {len(checked)}")
        checked.append(fast.neighbors.builds)
        return ev.energy, ev.forces

    out = velocity_verlet(both, atoms.positions, atoms.get_momenta(), atoms.get_masses(), steps, 2.0)
    assert len(checked) == steps + 1
    moved = np.abs(out.positions - atoms.positions).max()
    assert moved > skin  # the atoms went further than the skin: the list cannot have stayed valid by luck
    assert 1 < fast.neighbors.builds < steps  # rebuilt, and reused in between


def test_extrapolation_counts_and_float_dtype_of_the_network():
    atoms, model, _, _ = make_case("SiO2 quartz 72 atoms, 6.0/4.5")
    species = model.species_index(atoms.numbers)
    narrow = atoms.copy()
    narrow.rattle(0.01, seed=2)
    feats = model.features(species, torch.tensor(narrow.positions), torch.tensor(narrow.cell.array),
                           model.pairs(narrow.positions, narrow.cell.array, narrow.pbc))
    model.record_feature_range(feats, species)  # the range of one structure: others extrapolate
    ev_plain = model.evaluate(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc)
    ev_fast = FastPotential(model).evaluate(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc)
    assert ev_plain.extrapolating_atoms and 0 < ev_plain.extrapolating_atoms <= len(atoms)
    assert_same(ev_fast, ev_plain, "with a recorded range")

    single = model.to(torch.float32)  # float32 MLPs: G and dE/dG still cross over exactly as in float64
    ev32 = FastPotential(single).evaluate(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc)
    plain32 = single.evaluate(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc)
    np.testing.assert_allclose(ev32.forces, plain32.forces, atol=1e-4 * np.abs(plain32.forces).max())


def test_torch_fallback_and_calculator_agree_with_the_plain_path():
    atoms, model, _, _ = make_case("SiO2 quartz 9 atoms, 6.0/4.5")
    plain = model.evaluate(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc, stress=True)
    fallback = FastPotential(model, compiled=False)
    assert_same(fallback.evaluate(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc, stress=True), plain,
                "torch fallback with the Verlet list")
    results = {}
    for fast in (True, False):
        a = atoms.copy()
        a.calc = BPNNCalculator(model, fast=fast)
        results[fast] = (a.get_potential_energy(), a.get_forces(), a.get_stress())
    assert results[True][0] == pytest.approx(results[False][0], rel=RTOL)
    np.testing.assert_allclose(results[True][1], results[False][1], atol=RTOL * np.abs(plain.forces).max())
    np.testing.assert_allclose(results[True][2], results[False][2], atol=RTOL * np.abs(plain.stress).max())

    cluster = atoms.copy()  # no periodicity, no cell
    cluster.pbc, cluster.cell = False, np.zeros((3, 3))
    ev = FastPotential(model).evaluate(cluster.numbers, cluster.positions, cluster.cell.array, cluster.pbc)
    assert_same(ev, model.evaluate(cluster.numbers, cluster.positions, cluster.cell.array, cluster.pbc), "cluster")
    np.testing.assert_allclose(ev.forces.sum(0), 0.0, atol=1e-12)


def test_verlet_list_holds_every_pair_until_it_is_rebuilt():
    atoms = cu((2, 2, 2))
    atoms.rattle(0.05, seed=1)
    nl = VerletList(4.5, skin=0.4)
    assert nl.update(atoms.positions, atoms.cell.array, atoms.pbc) and nl.builds == 1
    rng = np.random.default_rng(0)
    positions = atoms.positions.copy()
    for _ in range(20):
        step = rng.normal(size=positions.shape)
        positions = positions + 0.03 * step / np.linalg.norm(step, axis=1, keepdims=True)
        rebuilt = nl.update(positions, atoms.cell.array, atoms.pbc)
        moved = np.linalg.norm(positions - nl._ref, axis=1).max()
        assert rebuilt or moved <= 0.2
        listed = set(zip(nl.i.tolist(), nl.j.tolist(), map(tuple, nl.shifts.tolist()), strict=True))
        i, j, s = neighbor_pairs(positions, atoms.cell.array, atoms.pbc, 4.5)
        assert set(zip(i.tolist(), j.tolist(), map(tuple, s.tolist()), strict=True)) <= listed
        assert np.all(np.diff(nl.i) >= 0) and nl.first[-1] == len(nl.i)
    assert 1 < nl.builds < 20
    assert nl.update(positions, 1.01 * atoms.cell.array, atoms.pbc)  # a new cell: rebuilt at once


def test_ml_md_trajectory_is_time_reversible_across_list_rebuilds():
    """Forward N steps, flip the momenta, N steps back: the start again (to rounding), although the
    neighbour list was rebuilt at different points on the way out and the way back."""
    atoms, model, _, _ = make_case("SiO2 quartz 72 atoms, 6.0/4.5")
    thermalize_momenta(atoms, 3000, rng=np.random.default_rng(3))
    fast = FastPotential(model, skin=0.1)
    forces = model_forces(fast, atoms.numbers, atoms.cell.array, atoms.pbc)
    masses = atoms.get_masses()
    out = velocity_verlet(forces, atoms.positions, atoms.get_momenta(), masses, 30, 2.0)
    builds_out = fast.neighbors.builds
    back = velocity_verlet(forces, out.positions, -out.momenta, masses, 30, 2.0)
    assert builds_out > 2 and fast.neighbors.builds > builds_out + 2
    np.testing.assert_allclose(back.positions, atoms.positions, rtol=0, atol=1e-9)
    p0 = atoms.get_momenta()
    np.testing.assert_allclose(-back.momenta, p0, rtol=0, atol=1e-9 * np.abs(p0).max())
    assert abs(back.e_end - out.e_start) < 1e-9


def test_cutoff_polynomial_equals_libm_cosine_cutoff():
    """The kernels' fc(r) and its slope are a polynomial (faster than libm's sincos): the same to rounding."""
    from slhmc.potential import _kernels

    rc = 4.5
    r = np.linspace(0.0, rc, 20001)[:-1]
    fc, dfc = np.array([_kernels._cutoff(x, 0.5 * np.pi / rc, rc) for x in r]).T
    np.testing.assert_allclose(fc, 0.5 * (np.cos(np.pi * r / rc) + 1.0), rtol=0, atol=1e-15)
    np.testing.assert_allclose(dfc, -0.5 * np.pi / rc * np.sin(np.pi * r / rc), rtol=0, atol=1e-15)
