"""Fitting a BPNN on reference energies and forces.

Training positions never move, so each label's symmetry functions G and their Jacobian
dG_i/dr_j are computed once (autograd) and kept. An epoch is then only the per-element MLPs:
forces are F_j = -sum_i (dE/dG_i) . dG_i/dr_j, a sparse contraction over the (i, j) blocks that
are non-zero. This makes a refit cost seconds instead of minutes of re-running the descriptor.

Loss: mean((E_pred - E)/N_atoms)^2 + force_weight * mean(|F_pred - F|^2) (eV, Å). Optimiser:
full-batch L-BFGS with a strong-Wolfe line search (for networks of a few hundred weights it
converges in far fewer passes than Adam), early stopping on a validation split that is a fixed
function of (seed, label id), so a label never moves between training and validation sets as
the data grows, and the best-validation weights are the ones kept.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .descriptors import symmetry_functions
from .network import BPNN

log = logging.getLogger(__name__)


@dataclass
class Label:
    """One reference calculation: structure, energy (eV) and forces (eV/Å)."""

    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    energy: float
    forces: np.ndarray
    label_id: int = 0

    @classmethod
    def from_atoms(cls, atoms, label_id: int = 0) -> Label:
        return cls(
            atoms.numbers.copy(),
            atoms.positions.copy(),
            np.asarray(atoms.cell.array).copy(),
            atoms.pbc.copy(),
            float(atoms.get_potential_energy()),
            atoms.get_forces().copy(),
            label_id,
        )


@dataclass
class Featurized:
    """A label with its fixed descriptor and descriptor Jacobian blocks dG_i/dr_j."""

    label_id: int
    species: torch.Tensor  # (N,)
    features: torch.Tensor  # (N, F)
    jac_i: torch.Tensor  # (P,) centre atom of each non-zero block
    jac_j: torch.Tensor  # (P,) atom whose displacement the block differentiates by
    jac: torch.Tensor  # (P, F, 3)
    energy: float
    forces: torch.Tensor  # (N, 3)


def featurize(model: BPNN, label: Label) -> Featurized:
    """Descriptor and its Jacobian for one label.

    Each pair p = (i, j, shift) enters only atom i's features, through its vector D_p = r_j - r_i
    (+ shift). So one backward pass per feature column f of sum_i G_if gives every dG_if/dD_p, and
    dG_i/dr_j = sum over pairs p of i with neighbour j of dG_i/dD_p, dG_i/dr_i = -sum_p dG_i/dD_p.
    F cheap backward passes instead of N*F.
    """
    species = model.species_index(label.numbers)
    i, j, shifts = model.pairs(label.positions, label.cell, label.pbc)
    dev = model.device
    pos = torch.tensor(label.positions, dtype=model.dtype, device=dev)
    cell = torch.tensor(label.cell, dtype=model.dtype, device=dev)
    vectors = (pos[j] - pos[i] + shifts.to(model.dtype) @ cell).requires_grad_(True)
    feats = symmetry_functions(model.spec, species, vectors, i, j)
    n, f = feats.shape
    columns = [
        torch.autograd.grad(feats[:, k].sum(), vectors, retain_graph=k < f - 1, allow_unused=True)[0]
        for k in range(f)
    ]
    columns = [torch.zeros_like(vectors) if c is None else c for c in columns]
    dG_dD = torch.stack(columns, dim=1)  # (P, F, 3)
    keys = torch.cat([i * n + j, i * n + i])
    unique, inverse = torch.unique(keys, return_inverse=True)
    blocks = torch.zeros(len(unique), f, 3, dtype=model.dtype, device=dev)
    blocks = blocks.index_add(0, inverse, torch.cat([dG_dD, -dG_dD]))
    return Featurized(
        label.label_id,
        species,
        feats.detach(),
        unique // n,
        unique % n,
        blocks,
        float(label.energy),
        torch.tensor(label.forces, dtype=model.dtype, device=dev),
    )


@dataclass
class _Batch:
    species: torch.Tensor
    features: torch.Tensor
    structure: torch.Tensor  # structure index of each atom
    n_atoms: torch.Tensor  # (S,)
    jac_i: torch.Tensor
    jac_j: torch.Tensor
    jac: torch.Tensor
    energy: torch.Tensor  # (S,)
    forces: torch.Tensor  # (sum N, 3)

    @classmethod
    def of(cls, items: list[Featurized]) -> _Batch:
        dtype, dev = items[0].features.dtype, items[0].features.device
        offsets = np.cumsum([0] + [len(it.species) for it in items])[:-1]  # first atom of each structure
        return cls(
            torch.cat([it.species for it in items]),
            torch.cat([it.features for it in items]),
            torch.cat([torch.full((len(it.species),), k, dtype=torch.long, device=dev) for k, it in enumerate(items)]),
            torch.tensor([len(it.species) for it in items], dtype=dtype, device=dev),
            torch.cat([it.jac_i + int(o) for it, o in zip(items, offsets, strict=True)]),
            torch.cat([it.jac_j + int(o) for it, o in zip(items, offsets, strict=True)]),
            torch.cat([it.jac for it in items]),
            torch.tensor([it.energy for it in items], dtype=dtype, device=dev),
            torch.cat([it.forces for it in items]),
        )


def predict(model: BPNN, batch: _Batch, create_graph: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Structure energies (S,) and atomic forces (sum N, 3) from the fixed descriptors."""
    feats = batch.features.detach().requires_grad_(True)
    atomic = model.atomic_energies(feats, batch.species)
    energy = torch.zeros_like(batch.energy).index_add(0, batch.structure, atomic)
    (dE_dG,) = torch.autograd.grad(atomic.sum(), feats, create_graph=create_graph)
    contrib = torch.einsum("pf,pfc->pc", dE_dG[batch.jac_i], batch.jac)
    forces = -torch.zeros_like(batch.forces).index_add(0, batch.jac_j, contrib)
    return energy, forces


@dataclass
class FitSettings:
    force_weight: float = 0.1  # relative weight of mean |dF|^2 (eV/Å)^2 to mean (dE/N)^2 (eV)^2
    validation_fraction: float = 0.1
    max_steps: int = 30  # L-BFGS outer steps of up to ``iterations_per_step`` iterations each
    iterations_per_step: int = 10
    patience: int = 4  # outer steps without validation improvement before stopping
    seed: int = 0


@dataclass
class FitResult:
    metrics: dict = field(default_factory=dict)


def split(keys: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Positions of training and validation items; membership is fixed per (seed, key)."""
    val = [k for k, key in enumerate(keys) if np.random.default_rng([seed, key]).random() < fraction]
    if fraction > 0 and not val and len(keys) > 1:
        val = [len(keys) - 1]
    if len(val) == len(keys):
        val = val[1:]
    val_set = set(val)
    return [k for k in range(len(keys)) if k not in val_set], val


def initialise_normalisation(model: BPNN, items: list[Featurized]) -> None:
    """Per-element feature mean/std and least-squares reference energies (first fit only)."""
    batch = _Batch.of(items)
    n_el = model.spec.n_elements
    with torch.no_grad():
        for k in range(n_el):
            sel = batch.features[batch.species == k]
            if len(sel):
                model.feature_mean[k] = sel.mean(0)
                model.feature_std[k] = sel.std(0, unbiased=False).clamp_min(1e-6) if len(sel) > 1 else 1.0
        counts = np.zeros((len(items), n_el))
        for s, it in enumerate(items):
            counts[s] = np.bincount(it.species.cpu().numpy(), minlength=n_el)
        energies = np.array([it.energy for it in items])
        ref, *_ = np.linalg.lstsq(counts, energies, rcond=None)
        model.ref_energy.copy_(torch.tensor(ref, dtype=model.dtype, device=model.device))


def errors(model: BPNN, items: list[Featurized]) -> dict:
    """Energy RMSE (meV/atom) and force RMSE (meV/Å) on ``items``."""
    if not items:
        return {"energy_rmse_mev_per_atom": None, "force_rmse_mev_per_A": None, "n": 0}
    batch = _Batch.of(items)
    energy, forces = predict(model, batch, create_graph=False)
    de = ((energy.detach() - batch.energy) / batch.n_atoms).pow(2).mean().sqrt()
    df = (forces.detach() - batch.forces).pow(2).mean().sqrt()
    return {"energy_rmse_mev_per_atom": 1e3 * float(de), "force_rmse_mev_per_A": 1e3 * float(df), "n": len(items)}


def fit(model: BPNN, items: list[Featurized], settings: FitSettings, warm_start: bool) -> dict:
    """Fit in place; returns metrics. ``warm_start`` keeps weights and normalisation."""
    t0 = time.perf_counter()
    torch.manual_seed(settings.seed)
    # membership by position in the training list, not by label id: a chain label keeps its place
    # whatever speculative labels were numbered in between (same model for any worker count)
    train_pos, val_pos = split(list(range(len(items))), settings.validation_fraction, settings.seed)
    train = [items[k] for k in train_pos]
    val = [items[k] for k in val_pos]
    if not warm_start:
        initialise_normalisation(model, train)
        for net in model.nets:
            for layer in net:
                if isinstance(layer, torch.nn.Linear):
                    layer.reset_parameters()
    batch = _Batch.of(train)
    val_batch = _Batch.of(val) if val else None
    optimiser = torch.optim.LBFGS(
        model.parameters(),
        lr=1.0,
        max_iter=settings.iterations_per_step,
        history_size=50,
        line_search_fn="strong_wolfe",
        tolerance_change=1e-14,
        tolerance_grad=1e-12,
    )

    def loss_of(b: _Batch, create_graph: bool) -> torch.Tensor:
        energy, forces = predict(model, b, create_graph)
        e_term = ((energy - b.energy) / b.n_atoms).pow(2).mean()
        f_term = (forces - b.forces).pow(2).mean()
        return e_term + settings.force_weight * f_term

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = loss_of(batch, create_graph=True)
        loss.backward()
        return loss

    best = (math.inf, {k: v.clone() for k, v in model.state_dict().items()})
    stale = steps = 0
    for steps in range(1, settings.max_steps + 1):
        optimiser.step(closure)
        monitor = loss_of(val_batch or batch, create_graph=False).item()
        if not math.isfinite(monitor):
            log.warning("non-finite loss at step %d; keeping the best weights so far", steps)
            break
        if monitor < best[0] * (1 - 1e-4):
            best = (monitor, {k: v.clone() for k, v in model.state_dict().items()})
            stale = 0
        else:
            stale += 1
            if stale >= settings.patience:
                break
    if math.isfinite(best[0]):
        model.load_state_dict(best[1])
    return {
        "train": errors(model, train),
        "validation": errors(model, val),
        "steps": steps,
        "seconds": round(time.perf_counter() - t0, 3),
        "n_labels": len(items),
    }
