"""Shared fixtures: small real structures and a randomly initialised (untrained) model."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import bulk

from slhmc.potential.descriptors import DescriptorSpec
from slhmc.potential.network import BPNN

TESTS = Path(__file__).parent
ROOT = TESTS.parent
sys.path.insert(0, str(TESTS))  # helpers.py: reference factories the worker processes import too


@pytest.fixture
def cu_alloy():
    """A distorted Cu/Ni fcc cell of 8 atoms: two elements, rattled, non-orthogonal cell."""
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 1, 1))
    atoms.numbers[[1, 4, 6]] = 28
    atoms.set_cell(atoms.cell.array @ np.array([[1.0, 0.03, 0.0], [0.0, 0.98, 0.02], [0.01, 0.0, 1.02]]),
                   scale_atoms=True)
    atoms.rattle(0.08, seed=3)
    return atoms


@pytest.fixture
def model():
    """A random two-element BPNN (float64) with non-trivial normalisation and reference energies."""
    torch.manual_seed(0)
    m = BPNN(DescriptorSpec.default([28, 29], cutoff=4.5, n_radial=5), hidden=(8, 8), activation="tanh")
    with torch.no_grad():
        m.feature_mean.uniform_(0.0, 0.5)
        m.feature_std.uniform_(0.5, 2.0)
        m.ref_energy.copy_(torch.tensor([-1.3, -2.1], dtype=m.dtype))
    return m
