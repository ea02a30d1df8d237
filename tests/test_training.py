"""A fit on real EMT labels learns: held-out errors fall far below the untrained model's, the
batched training forces (and stress) equal evaluate()'s autograd forces (and stress), the analytic
descriptor Jacobian equals autograd's, the label store packs labels without changing the fit, a
fit is reproducible, and fitting the stress of labels that carry one lowers the held-out stress
error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.emt import EMT

from slhmc.config import PotentialConfig, TrainingConfig, trainer_settings
from slhmc.potential.descriptors import DescriptorSpec, symmetry_functions, symmetry_functions_with_jacobian
from slhmc.potential.network import BPNN
from slhmc.potential.training import (
    VOIGT,
    Batch,
    FitSettings,
    Label,
    LabelStore,
    choose_force_atoms,
    errors,
    featurize,
    fit,
    predict,
    split,
)

from .runs import (
    emt_labels,
)


def new_model() -> BPNN:
    return BPNN(DescriptorSpec.default([29], cutoff=4.5, n_radial=6), hidden=(10, 10), activation="tanh")


def run_settings(seed: int, **training) -> FitSettings:
    """A run's fit settings: the config's defaults, with ``training`` keys changed."""
    return trainer_settings(PotentialConfig(), TrainingConfig(**training), seed)[0]


@pytest.mark.parametrize("atoms", [
    bulk("SiO", "rocksalt", a=4.2, cubic=True),  # two elements, all element-pair slots
    bulk("Cu", "fcc", a=3.6),  # one atom: many images of itself within the cutoff
])
def test_analytic_jacobian_equals_autograd(atoms):
    atoms = atoms.repeat((2, 1, 1)) if len(atoms) > 1 else atoms
    atoms.rattle(0.1, seed=3)
    model = BPNN(DescriptorSpec.default(sorted(set(atoms.numbers)), cutoff=5.0, angular_cutoff=4.0), (15, 15), "tanh")
    species = model.species_index(atoms.numbers)
    i, j, shifts = model.pairs(atoms.positions, atoms.cell.array, atoms.pbc)
    pos, cell = torch.tensor(atoms.positions), torch.tensor(atoms.cell.array)
    vectors = (pos[j] - pos[i] + shifts.double() @ cell).requires_grad_(True)
    feats = symmetry_functions(model.spec, species, vectors, i, j)
    columns = [torch.autograd.grad(feats[:, k].sum(), vectors, retain_graph=True)[0] for k in range(feats.shape[1])]
    g, jac = symmetry_functions_with_jacobian(model.spec, species, vectors, i, j)
    torch.testing.assert_close(g, feats.detach(), rtol=0, atol=1e-13)
    torch.testing.assert_close(jac, torch.stack(columns, dim=1), rtol=0, atol=1e-12)


def test_training_forces_equal_autograd_forces():
    torch.manual_seed(0)
    model = new_model()
    labels = emt_labels(3, seed=1)
    for force_atoms in (0, 5):
        items = [featurize(model, lab, force_atoms) for lab in labels]
        _, forces, _ = predict(model, Batch.of(items, 1), create_graph=False)
        direct = np.concatenate([model.evaluate(lab.numbers, lab.positions, lab.cell, lab.pbc).forces
                                 [choose_force_atoms(lab, force_atoms)] for lab in labels])
        # the stored Jacobian is float32: forces to ~1e-7 relative per term, a few 1e-6 of the largest
        # force after summing a neighbourhood (up to 1.8e-6 over 40 random networks)
        np.testing.assert_allclose(forces.detach().numpy(), direct, atol=3e-6 * np.abs(direct).max())
    assert len(choose_force_atoms(labels[0], 5)) == 5
    assert np.array_equal(choose_force_atoms(labels[0], 5), choose_force_atoms(labels[0], 5))


def test_split_never_moves_training_into_validation():
    before = split(30, 0.1, seed=4)
    assert len(before[1]) >= 4  # small sets still validate on several labels
    for n in (31, 60, 200):
        train, val = split(n, 0.1, seed=4)
        assert not set(val) & set(before[0])
        assert sorted(train + val) == list(range(n))


def test_store_chunks_do_not_change_the_fit(monkeypatch):
    """Labels packed into several chunks fit to the same model as one batch."""
    labels = emt_labels(12, seed=6)
    settings = run_settings(1, max_steps=3, validation_fraction=0.2)
    one = new_model()
    fit(one, [featurize(one, lab) for lab in labels], settings, warm_start=False)
    import slhmc.potential.training as training

    monkeypatch.setattr(training, "CHUNK_JACOBIAN_ELEMENTS", 1)  # a chunk per label
    chunked = new_model()
    store = LabelStore(chunked)
    store.featurize_and_add(chunked, labels)
    assert len(store.sealed) == 12 and not store.open
    fit(chunked, store, settings, warm_start=False)
    for a, b in zip(one.state_dict().values(), chunked.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_fit_learns_emt_and_is_reproducible():
    train_labels, test_labels = emt_labels(24, seed=2), emt_labels(8, seed=3)
    settings = run_settings(5, max_steps=15, validation_fraction=0.15)

    model = new_model()
    items = [featurize(model, lab) for lab in train_labels]
    metrics = fit(model, items, settings, warm_start=False)
    held_out = errors(model, [featurize(model, lab) for lab in test_labels])
    assert metrics["validation"]["n"] >= 4 and metrics["train"]["n"] + metrics["validation"]["n"] == 24
    # EMT forces here are ~0.8 eV/Å rms; the untrained (normalised) network is off by ~2 eV/Å
    assert held_out["force_rmse_mev_per_A"] < 60
    assert held_out["energy_rmse_mev_per_atom"] < 3

    again = new_model()
    fit(again, [featurize(again, lab) for lab in train_labels], settings, warm_start=False)
    lab = test_labels[0]
    e1 = model.evaluate(lab.numbers, lab.positions, lab.cell, lab.pbc).energy
    assert again.evaluate(lab.numbers, lab.positions, lab.cell, lab.pbc).energy == pytest.approx(e1, abs=1e-9)

    # a warm start keeps what was learned: the validation loss cannot get worse
    warm = fit(model, items, run_settings(5, max_steps=1, validation_fraction=0.15), warm_start=True)
    assert warm["validation"]["force_rmse_mev_per_A"] <= metrics["validation"]["force_rmse_mev_per_A"] * 1.0001


def strained_emt_labels(n: int, seed: int) -> list[Label]:
    """EMT labels (energy, forces, stress) of fcc Cu cells of 8, 16 and 32 atoms under a random
    symmetric strain of up to ±3 % per component (shear too), rattled by 0.07 Å."""
    rng = np.random.default_rng(seed)
    labels = []
    for k in range(n):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat([(2, 1, 1), (2, 2, 1), (2, 2, 2)][k % 3])
        eps = rng.uniform(-0.03, 0.03, (3, 3))
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + 0.5 * (eps + eps.T)), scale_atoms=True)
        atoms.positions += rng.normal(0, 0.07, atoms.positions.shape)
        atoms.calc = EMT()
        atoms.get_potential_energy()
        labels.append(Label.from_atoms(atoms, label_id=k))  # EMT's results hold the stress: taken
    return labels


def sheared_rocksalt(seed: int) -> Label:
    """A rattled two-element cell with a non-orthogonal cell, an arbitrary stress (not fitted here)."""
    atoms = bulk("SiO", "rocksalt", a=4.2, cubic=True).repeat((2, 1, 1))
    cell = atoms.cell.array.copy()
    cell[1] += [0.4, 0.0, 0.0]
    cell[2] += [0.3, -0.2, 0.0]
    atoms.set_cell(cell, scale_atoms=True)
    atoms.rattle(0.1, seed=seed)
    return Label(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc, 0.0, np.zeros((len(atoms), 3)),
                 seed, np.zeros(6))


def test_training_stress_equals_autograd_stress():
    """The virial from the stored strain derivative dG/dε (float32) is evaluate()'s autograd stress
    times the volume, per label of a batch that mixes labels with and without a stress."""
    torch.manual_seed(0)
    model = BPNN(DescriptorSpec.default([8, 14], cutoff=5.0, angular_cutoff=4.0), (15, 15), "tanh")
    labels = [sheared_rocksalt(seed) for seed in (1, 2, 3)]
    labels[1].stress = None  # no stress: no strain derivative, no stress row
    i, j, shifts = model.pairs(labels[0].positions, labels[0].cell, labels[0].pbc)
    vec = labels[0].positions[j.numpy()] - labels[0].positions[i.numpy()] + shifts.numpy() @ labels[0].cell
    dist = np.linalg.norm(vec, axis=1)
    assert ((dist > 4.9) & (dist < 5.0)).any() and ((dist > 3.9) & (dist < 4.0)).any()  # pairs near both cutoffs
    cu = BPNN(DescriptorSpec.default([29], cutoff=5.0), (10,), "tanh")
    one = bulk("Cu", "fcc", a=3.6)  # one atom, a non-orthogonal cell: many images of itself within the cutoff
    one.rattle(0.05, seed=1)
    one_label = Label(one.numbers, one.positions, one.cell.array, one.pbc, 0.0, np.zeros((1, 3)), 0, np.zeros(6))
    for net, labs in ((model, labels), (cu, [one_label])):
        items = [featurize(net, lab) for lab in labs]
        assert all((it.strain is None) == (lab.stress is None) for it, lab in zip(items, labs, strict=True))
        batch = Batch.of(items, net.spec.n_elements)
        _, _, virial = predict(net, batch, create_graph=False, stress=True)
        with_stress = [lab for lab in labs if lab.stress is not None]
        assert virial.shape == (len(with_stress), 6)
        for row, lab in zip(virial.numpy(), with_stress, strict=True):
            sigma = net.evaluate(lab.numbers, lab.positions, lab.cell, lab.pbc, stress=True).stress
            direct = np.array([sigma[a, b] for a, b in VOIGT])
            volume = abs(np.linalg.det(lab.cell))
            # float32 dG/dε, as the forces: ~2e-7 of the largest component typically, 1.2e-6 at most over
            # 30 random networks
            np.testing.assert_allclose(row / volume, direct, rtol=0, atol=3e-6 * np.abs(direct).max())
            assert np.abs(direct).max() > 1e-4  # a real test: a stress well above the tolerance


def test_labels_without_stress_and_weight_zero_change_nothing():
    """stress_weight 0 fits exactly as without stresses, and so does any weight on labels without one;
    the metrics then say no stress (None)."""
    labels = strained_emt_labels(6, seed=4)
    bare = [Label(lab.numbers, lab.positions, lab.cell, lab.pbc, lab.energy, lab.forces, lab.label_id)
            for lab in labels]
    weights = []
    for labs, weight in ((labels, 0.0), (bare, 0.0), (bare, 0.5)):
        model = new_model()
        metrics = fit(model, [featurize(model, lab) for lab in labs],
                      run_settings(2, max_steps=2, validation_fraction=0.3, stress_weight=weight), warm_start=False)
        weights.append(model.state_dict())
        assert (metrics["validation"]["stress_rmse_GPa"] is None) == (labs is bare)
    for other in weights[1:]:
        for a, b in zip(weights[0].values(), other.values(), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert errors(new_model(), [])["stress_rmse_GPa"] is None


def test_fitting_the_stress_lowers_the_held_out_stress_error():
    """Six small strained Cu cells: energies and forces alone leave the stress (the strain response)
    poorly fixed; with the stress term the held-out stress error falls, energies and forces stay."""
    train, test = strained_emt_labels(6, seed=3), strained_emt_labels(12, seed=99)
    probe = new_model()
    items, held = [featurize(probe, lab) for lab in train], [featurize(probe, lab) for lab in test]
    # memory: the strain derivative is N x F x 6 float32 per label
    assert items[2].strain.shape == (32, probe.spec.n_features, 6) and items[2].strain.dtype == torch.float32
    out = {}
    for weight in (0.0, 0.001):
        model = new_model()
        # no validation split: with six labels, early stopping on one or two would be noise
        fit(model, items, run_settings(5, max_steps=30, validation_fraction=0.0, stress_weight=weight),
            warm_start=False)
        out[weight] = errors(model, held)
    off, on = out[0.0], out[0.001]
    print("stress weight 0:", off, "\nstress weight 0.001:", on)
    assert on["n_stress"] == 12 and off["stress_rmse_GPa"] > 0.1  # EMT stresses here are ~3.6 GPa rms
    assert on["stress_rmse_GPa"] < 0.7 * off["stress_rmse_GPa"]
    assert on["energy_rmse_mev_per_atom"] < 1.5 * off["energy_rmse_mev_per_atom"]
    assert on["force_rmse_mev_per_A"] < 1.3 * off["force_rmse_mev_per_A"]


def test_the_trainer_takes_the_stress_of_labels_from_the_wire():
    """A labels message (the real protocol) with a stress, with None and without the field."""
    from slhmc.clients.trainer import TrainerHandler
    from slhmc.protocol.schema import build, parse

    labels = strained_emt_labels(3, seed=5)
    wire = []
    for k, lab in enumerate(labels):
        d = {"numbers": lab.numbers.astype(np.int64), "positions": lab.positions, "cell": lab.cell, "pbc": lab.pbc,
             "label_id": lab.label_id, "energy": lab.energy, "forces": lab.forces}
        if k < 2:
            d["stress"] = lab.stress if k == 0 else None
        wire.append(d)
    trainer = TrainerHandler("cpu")
    assert trainer.handle(parse(build("labels", labels=wire))) is None
    np.testing.assert_array_equal(trainer.labels[0].stress, labels[0].stress)
    assert trainer.labels[1].stress is None and trainer.labels[2].stress is None
    fit_settings, arch = trainer_settings(PotentialConfig(cutoff=4.5, hidden=[4]), TrainingConfig(
        max_steps=1, validation_fraction=0.0), seed=0)
    metrics = trainer.train(0, [0, 1, 2], False, fit_settings, arch)["metrics"]
    assert metrics["train"]["n_stress"] == 1 and metrics["train"]["stress_rmse_GPa"] > 0
