"""The Behler–Parrinello network: one MLP per element on standardised symmetry functions.

E = sum_i [ NN_{Z_i}((G_i - mean_Z) / std_Z) + e_ref[Z_i] ]

The feature mean/std and the per-element reference energies ``e_ref`` (eV, least squares on the
training set) are buffers fixed at the first fit, so a warm-started refit keeps meaning the same
function of its weights. Forces and stress are autograd gradients of E (no other path exists:
the ML-MD proposal must be the exact gradient of one energy to keep HMC exact).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .descriptors import DescriptorSpec, symmetry_functions
from .neighbors import neighbor_pairs

ACTIVATIONS = {"tanh": nn.Tanh, "softplus": nn.Softplus, "silu": nn.SiLU}


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
    """Energy (eV), forces (eV/Å, (N, 3)) and stress (eV/Å³, 3x3, or None)."""

    energy: float
    forces: np.ndarray
    stress: np.ndarray | None = None


class BPNN(nn.Module):
    def __init__(
        self,
        spec: DescriptorSpec,
        hidden: tuple[int, ...] = (15, 15),
        activation: str = "tanh",
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
    ) -> Evaluation:
        """Energy and autograd forces (and stress) for one structure in ASE units."""
        species = self.species_index(numbers)
        pos = torch.tensor(positions, dtype=self.dtype, device=self.device, requires_grad=True)
        cell_t = torch.tensor(np.asarray(cell), dtype=self.dtype, device=self.device)
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
        return Evaluation(float(energy.detach()), forces, sigma)
