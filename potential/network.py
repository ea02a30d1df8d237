"""The Behler–Parrinello network: one MLP per element on standardised symmetry functions.

E = sum_i [ NN_{Z_i}((G_i - mean_Z) / std_Z) + e_ref[Z_i] ]

The feature mean/std and the per-element reference energies ``e_ref`` (eV, least squares on the
training set) are buffers fixed at the first fit, so a warm-started refit keeps meaning the same
function of its weights. Forces and stress are autograd gradients of E here; the MD path
(``slhmc.potential.fast``) computes the same gradient analytically and is tested against this one
(the ML-MD proposal must be the exact gradient of one energy to keep HMC exact).

Extrapolation (as n2p2's "extrapolation warnings"): the buffers ``feature_min``/``feature_max``
hold, per element, the range of every symmetry function seen in training
(:meth:`BPNN.record_feature_range`). An atom extrapolates when any of its features lies outside
[min - m, max + m], m = EXTRAPOLATION_RELATIVE_MARGIN * (max - min) + EXTRAPOLATION_ABSOLUTE_MARGIN;
:meth:`BPNN.evaluate` counts such atoms. Before any range is recorded (min = +inf, max = -inf,
also what a model saved before these buffers existed loads with) nothing is checked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .descriptors import DescriptorSpec, symmetry_functions
from .neighbors import neighbor_pairs

ACTIVATIONS = {"tanh": nn.Tanh, "softplus": nn.Softplus, "silu": nn.SiLU}

# Tolerance of the extrapolation check, on the raw (unstandardised, dimensionless) symmetry
# functions: a feature may exceed its training range by 0.1 % of that range (n2p2 likewise allows
# a small margin), plus 1e-8 absolute so that a feature constant in training (a range of zero,
# e.g. a cross-element function that was always 0) does not flag on round-off alone.
EXTRAPOLATION_RELATIVE_MARGIN = 1e-3
EXTRAPOLATION_ABSOLUTE_MARGIN = 1e-8


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None`` or "auto": the GPU when torch has one, else the CPU; otherwise as given."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _mlp(n_in: int, hidden: tuple[int, ...], activation: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(n_in, width), ACTIVATIONS[activation]()]
        n_in = width
    layers.append(nn.Linear(n_in, 1))
    return nn.Sequential(*layers)


@dataclass
class Evaluation:
    """Energy (eV), forces (eV/Å, (N, 3)) and stress (eV/Å³, 3x3, or None).

    ``extrapolating_atoms``: atoms with at least one symmetry function outside the training range
    (see the module docstring), ``extrapolating_per_element`` the same per element in the order of
    ``spec.elements``; both None when the model has no recorded range (nothing checked).
    """

    energy: float
    forces: np.ndarray
    stress: np.ndarray | None = None
    extrapolating_atoms: int | None = None
    extrapolating_per_element: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Architecture:
    """What a new network needs besides its elements; a run takes it from ``[potential]``
    (``slhmc.config.trainer_settings``), and a train_task carries it to the trainer.

    ``cutoff``/``angular_cutoff``: Å, the descriptor's radial and angular cutoffs;
    ``hidden``: the widths of each element's hidden layers; ``activation``: a name in ACTIVATIONS.
    """

    cutoff: float
    angular_cutoff: float
    hidden: tuple[int, ...]
    activation: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))  # a list from the wire

    def build(self, elements: list[int] | tuple[int, ...], device: str | torch.device = "cpu") -> BPNN:
        """An untrained float64 network for ``elements`` (atomic numbers) with the default descriptor."""
        spec = DescriptorSpec.default(elements, self.cutoff, self.angular_cutoff)
        return BPNN(spec, self.hidden, self.activation).to(device)


class BPNN(nn.Module):
    def __init__(
        self,
        spec: DescriptorSpec,
        hidden: tuple[int, ...],
        activation: str,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.spec = spec
        self.hidden = tuple(int(h) for h in hidden)
        self.activation = activation
        n_el, n_feat = spec.n_elements, spec.n_features
        self.nets = nn.ModuleList(_mlp(n_feat, self.hidden, activation) for _ in range(n_el))
        self.register_buffer("feature_mean", torch.zeros(n_el, n_feat))
        self.register_buffer("feature_std", torch.ones(n_el, n_feat))
        self.register_buffer("ref_energy", torch.zeros(n_el))
        # training range of each feature per element; +inf/-inf: none recorded (no check)
        self.register_buffer("feature_min", torch.full((n_el, n_feat), math.inf))
        self.register_buffer("feature_max", torch.full((n_el, n_feat), -math.inf))
        self.to(dtype)

    @property
    def dtype(self) -> torch.dtype:
        return self.ref_energy.dtype

    @property
    def device(self) -> torch.device:
        return self.ref_energy.device

    def hyperparameters(self) -> dict:
        return {
            "descriptor": self.spec.to_dict(),
            "hidden": list(self.hidden),
            "activation": self.activation,
            "dtype": str(self.dtype).removeprefix("torch."),
        }

    def species_index(self, numbers: np.ndarray) -> torch.Tensor:
        """Atomic numbers -> element indices; an element the model was not built for is an error."""
        lookup = {z: k for k, z in enumerate(self.spec.elements)}
        try:
            idx = [lookup[int(z)] for z in numbers]
        except KeyError as err:
            raise ValueError(
                f"element Z={err.args[0]} is not in this model's elements {list(self.spec.elements)}"
            ) from None
        return torch.tensor(idx, dtype=torch.long, device=self.device)

    def atomic_energies(self, features: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        energies = torch.zeros(features.shape[0], dtype=features.dtype, device=features.device)
        for k, net in enumerate(self.nets):
            (atoms,) = (species == k).nonzero(as_tuple=True)
            if atoms.numel():
                x = (features[atoms] - self.feature_mean[k]) / self.feature_std[k]
                energies = energies.index_put((atoms,), net(x).squeeze(-1) + self.ref_energy[k])
        return energies

    @torch.no_grad()
    def record_feature_range(self, features: torch.Tensor, species: torch.Tensor) -> None:
        """Widen the per-element training range ``feature_min``/``feature_max`` to include
        ``features`` ((N, F), raw symmetry functions) of atoms with element indices ``species`` (N,)."""
        features = features.detach().to(device=self.device, dtype=self.dtype)
        species = species.to(self.device)
        for k in range(self.spec.n_elements):
            sel = features[species == k]
            if len(sel):
                self.feature_min[k] = torch.minimum(self.feature_min[k], sel.amin(0))
                self.feature_max[k] = torch.maximum(self.feature_max[k], sel.amax(0))

    def reset_feature_range(self) -> None:
        """Forget the recorded training range (before a fit from scratch)."""
        self.feature_min.fill_(math.inf)
        self.feature_max.fill_(-math.inf)

    def has_feature_range(self) -> bool:
        """Whether a training range was recorded for at least one element (else no check)."""
        return self._extrapolation_bounds() is not None

    def _extrapolation_bounds(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Per-element (lower, upper) limits, the range widened by the margin; None if no range
        was recorded. Cached until the range buffers change (in place, by loading, or by .to())."""
        lo, hi = self.feature_min, self.feature_max
        try:
            key = (lo._version, hi._version, lo.data_ptr(), hi.data_ptr(), lo.dtype, lo.device)
        except RuntimeError:  # inference-mode tensors keep no version counter: no caching
            key = None
        cached = getattr(self, "_bounds_cache", None)
        if key is not None and cached is not None and cached[0] == key:
            return cached[1]
        with torch.no_grad():
            if bool((lo <= hi).all(dim=1).any()):
                margin = EXTRAPOLATION_RELATIVE_MARGIN * (hi - lo) + EXTRAPOLATION_ABSOLUTE_MARGIN
                bounds = (lo - margin, hi + margin)  # an element never recorded: (+inf, -inf), always out
            else:
                bounds = None
        self._bounds_cache = (key, bounds)
        return bounds

    def count_extrapolating(self, features: torch.Tensor, species: torch.Tensor) -> torch.Tensor | None:
        """Per element (n_elements,), how many atoms have at least one feature outside the training
        range widened by the margin; None if no range was recorded. Atoms of an element that had
        no training atoms at all count as extrapolating (its network never saw data).

        A handful of small tensor operations on the (N, F) features the step computed anyway
        (``features`` must not require grad: pass them detached)."""
        outside = self._outside_range(features, species)
        if outside is None:
            return None
        return torch.bincount(species[outside], minlength=self.spec.n_elements)

    def _outside_range(self, features: torch.Tensor, species: torch.Tensor) -> torch.Tensor | None:
        """(N,) bool: the atom has a feature outside [min - margin, max + margin] of its element."""
        bounds = self._extrapolation_bounds()
        if bounds is None:
            return None
        below, above = bounds[0].index_select(0, species), bounds[1].index_select(0, species)
        return ((features < below) | (features > above)).any(dim=1)

    @torch.no_grad()
    def extrapolating_mask(
        self, numbers: np.ndarray, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray
    ) -> np.ndarray | None:
        """Which atoms of one structure (ASE units) extrapolate, (N,) bool; None if no range was
        recorded. For inspecting a flagged structure; the MD step uses :meth:`count_extrapolating`."""
        if not self.has_feature_range():
            return None
        species = self.species_index(numbers)
        pos = torch.tensor(positions, dtype=self.dtype, device=self.device)
        cell_t = torch.tensor(np.asarray(cell), dtype=self.dtype, device=self.device)
        feats = self.features(species, pos, cell_t, self.pairs(positions, np.asarray(cell), pbc))
        return self._outside_range(feats, species).cpu().numpy()

    def features(
        self, species: torch.Tensor, positions: torch.Tensor, cell: torch.Tensor, pairs: tuple
    ) -> torch.Tensor:
        i, j, shifts = pairs
        vectors = positions.index_select(0, j) - positions.index_select(0, i) + shifts.to(positions.dtype) @ cell
        return symmetry_functions(self.spec, species, vectors, i, j)

    def pairs(self, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> tuple:
        i, j, shifts = neighbor_pairs(positions, cell, pbc, self.spec.cutoff)
        dev = self.device
        return torch.from_numpy(i).to(dev), torch.from_numpy(j).to(dev), torch.from_numpy(shifts).to(dev)

    def evaluate(
        self,
        numbers: np.ndarray,
        positions: np.ndarray,
        cell: np.ndarray,
        pbc: np.ndarray,
        stress: bool = False,
        pairs: tuple | None = None,
    ) -> Evaluation:
        """Energy and autograd forces (and stress) for one structure in ASE units.

        ``pairs``: (i, j, shifts) tensors of a neighbour list holding at least every pair within the
        cutoff (e.g. a VerletList's, with a skin: pairs beyond the cutoff add exactly nothing); by
        default built here. :class:`slhmc.potential.fast.FastPotential` is the faster MD path."""
        species = self.species_index(numbers)
        pos = torch.tensor(positions, dtype=self.dtype, device=self.device, requires_grad=True)
        cell_t = torch.tensor(np.asarray(cell), dtype=self.dtype, device=self.device)
        if pairs is None:
            pairs = self.pairs(positions, np.asarray(cell), pbc)
        strain = torch.zeros(3, 3, dtype=self.dtype, device=self.device, requires_grad=bool(stress))
        deform = torch.eye(3, dtype=self.dtype, device=self.device) + strain
        feats = self.features(species, pos @ deform, cell_t @ deform, pairs)
        energy = self.atomic_energies(feats, species).sum()
        inputs = [pos, strain] if stress else [pos]
        grads = torch.autograd.grad(energy, inputs)
        forces = -grads[0].detach().cpu().numpy()
        sigma = None
        if stress:
            volume = abs(float(np.linalg.det(np.asarray(cell))))
            if volume <= 0:
                raise ValueError("stress needs a cell with non-zero volume")
            dedstrain = grads[1].detach().cpu().numpy()
            sigma = 0.5 * (dedstrain + dedstrain.T) / volume
        counts = self.count_extrapolating(feats.detach(), species)
        per_element = None if counts is None else tuple(counts.tolist())
        return Evaluation(float(energy.detach()), forces, sigma,
                          None if per_element is None else sum(per_element), per_element)
