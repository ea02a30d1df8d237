"""The chain's building blocks: the per-trial random stream, kinetic energy and the Metropolis rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
from ase import units

from slhmc import hmc


def test_trial_stream_is_keyed_by_seed_and_trial_only():
    masses = np.array([1.0, 63.5, 12.0])
    a = hmc.draw(7, 41, masses, 300.0)
    b = hmc.draw(7, 41, masses, 300.0)
    assert np.array_equal(a.momenta, b.momenta) and a.uniform == b.uniform
    assert not np.array_equal(a.momenta, hmc.draw(7, 42, masses, 300.0).momenta)
    assert not np.array_equal(a.momenta, hmc.draw(8, 41, masses, 300.0).momenta)
    assert 0.0 <= a.uniform < 1.0


def test_momenta_are_maxwell_boltzmann():
    masses = np.full(64, 63.546)
    T = 500.0
    k = np.array([hmc.kinetic_energy(hmc.draw(1, t, masses, T).momenta, masses) for t in range(2000)])
    expected = 1.5 * len(masses) * units.kB * T  # equipartition, 3N/2 kT
    sem = expected * math.sqrt(2 / (3 * len(masses))) / math.sqrt(len(k))  # K is Gamma(3N/2, kT)
    assert abs(k.mean() - expected) < 4 * sem
    u = np.array([hmc.draw(1, t, masses, T).uniform for t in range(2000)])
    assert abs(u.mean() - 0.5) < 4 * math.sqrt(1 / 12 / len(u))


def test_exact_delta_h_and_metropolis():
    assert hmc.delta_h(k_old=1.0, e_old=-10.0, k_new=0.5, e_new=-9.2) == pytest.approx(0.3)
    kT = units.kB * 300.0
    assert hmc.accept(-1.0, 300.0, 0.999999)  # downhill always
    p = math.exp(-0.02 / kT)
    assert hmc.accept(0.02, 300.0, p - 1e-9)
    assert not hmc.accept(0.02, 300.0, p + 1e-9)
    assert not hmc.accept(50.0, 300.0, 0.0)  # exp underflows to 0: still a rejection, no error
