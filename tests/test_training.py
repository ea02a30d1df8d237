"""A fit on real EMT labels learns: held-out errors fall far below the untrained model's, the
batched training forces equal evaluate()'s autograd forces, the analytic descriptor Jacobian
equals autograd's, the label store packs labels without changing the fit, and a fit is
reproducible."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk

from slhmc.config import PotentialConfig, TrainingConfig, trainer_settings
from slhmc.potential.descriptors import DescriptorSpec, symmetry_functions, symmetry_functions_with_jacobian
from slhmc.potential.network import BPNN
from slhmc.potential.training import (
    Batch,
    FitSettings,
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
    model = new_model()
    labels = emt_labels(3, seed=1)
    for force_atoms in (0, 5):
        items = [featurize(model, lab, force_atoms) for lab in labels]
        _, forces = predict(model, Batch.of(items, 1), create_graph=False)
        direct = np.concatenate([model.evaluate(lab.numbers, lab.positions, lab.cell, lab.pbc).forces
                                 [choose_force_atoms(lab, force_atoms)] for lab in labels])
        # the stored Jacobian is float32: forces to ~1e-7 relative
        np.testing.assert_allclose(forces.detach().numpy(), direct, atol=1e-6 * np.abs(direct).max())
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
