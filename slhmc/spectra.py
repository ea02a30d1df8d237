"""Vibrational density of states from MD velocities, and the harmonic one to check it against.

The VACF DOS is the power spectrum of the mass-weighted velocities (Wiener–Khinchin):
g(ν) ∝ Σ_i m_i |∫ v_i(t) e^{-2πiνt} w(t) dt|², with a Hann window w against leakage; per element
by summing over that element's atoms only. Each curve is normalised to unit area over ν (1/THz).
In the harmonic limit it equals the phonon DOS; anharmonicity shifts and broadens its peaks.

The centre-of-mass velocity is removed from every frame first: a uniform drift (what a
thermostat's random kicks leave behind) is no vibration, and would put a spike of weight 1/N at
ν = 0. The spectrum of a run of length T = n·dt is sampled every 1/T: that is its frequency
resolution, and no smoothing applied afterwards makes it finer.
"""

from __future__ import annotations

import numpy as np
from ase import units
from ase.data import chemical_symbols

THZ_PER_INVERSE_FS = 1e3  # frames dt_fs apart: FFT frequencies in 1/fs
EV_PER_THZ = units._hplanck * 1e12 / units._e  # h·ν: 1 THz = 4.136 meV


def remove_com_velocity(velocities: np.ndarray, masses: np.ndarray) -> np.ndarray:
    """Velocities (frames, atoms, 3) minus each frame's mass-weighted centre-of-mass velocity."""
    com = np.einsum("fac,a->fc", velocities, masses) / masses.sum()
    return velocities - com[:, None, :]


def vacf_dos(velocities: np.ndarray, masses: np.ndarray, numbers: np.ndarray, dt_fs: float) -> dict:
    """DOS from velocities (frames, atoms, 3; any unit) of frames ``dt_fs`` fs apart, centre-of-mass
    motion removed: {"nu_THz", "total", per-element symbols}, curves in 1/THz on the grid
    0, 1/T, 2/T, ... (THz) with T = n·dt the length of the run."""
    n = velocities.shape[0]
    velocities = remove_com_velocity(velocities, masses)
    window = np.hanning(n)[:, None, None]
    spectrum = np.abs(np.fft.rfft(velocities * window, axis=0)) ** 2  # (freq, atoms, 3)
    per_atom = spectrum.sum(axis=2) * masses[None, :]
    nu = np.fft.rfftfreq(n, d=dt_fs) * THZ_PER_INVERSE_FS
    out = {"nu_THz": nu, "total": _normalise(per_atom.sum(axis=1), nu)}
    for z in sorted(set(numbers.tolist())):
        out[chemical_symbols[z]] = _normalise(per_atom[:, numbers == z].sum(axis=1), nu)
    return out


def _normalise(g: np.ndarray, nu: np.ndarray) -> np.ndarray:
    area = np.trapezoid(g, nu)
    return g / area if area > 0 else g


def smooth(g: np.ndarray, nu: np.ndarray, width_THz: float) -> np.ndarray:
    """Gaussian smoothing (standard deviation ``width_THz``) of a spectrum sampled on the uniform
    grid ``nu`` (THz); a grid spacing of more than 4 widths leaves it unchanged."""
    step = nu[1] - nu[0]
    half = int(4 * width_THz / step)
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1) * step / width_THz) ** 2)
    return np.convolve(g, kernel / kernel.sum(), mode="same")


def harmonic_dos(atoms, calc, supercell: tuple[int, int, int] = (3, 3, 3), kpts: int = 20,
                 width_THz: float = 0.15, nu_max_THz: float = 15.0, name: str = "phonon") -> dict:
    """Phonon DOS of ``atoms`` (the primitive or conventional cell) with ``calc`` via ase.phonons
    (finite displacements, then Fourier interpolation on a kpts³ grid), on the same THz axis."""
    import tempfile

    from ase.phonons import Phonons

    with tempfile.TemporaryDirectory() as tmp:
        ph = Phonons(atoms, calc, supercell=supercell, delta=0.01, name=f"{tmp}/{name}")
        ph.run()
        ph.read(acoustic=True)
        dos = ph.get_dos(kpts=(kpts, kpts, kpts))
        nu = np.linspace(0.0, nu_max_THz, 1500)
        g = dos.sample_grid(npts=len(nu), xmin=0.0, xmax=nu_max_THz * EV_PER_THZ,
                            width=width_THz * EV_PER_THZ).get_weights()
        ph.clean()
    return {"nu_THz": nu, "total": _normalise(np.asarray(g), nu)}


def gamma_frequencies_THz(atoms, calc) -> np.ndarray:
    """Harmonic frequencies (THz) of every mode of ``atoms`` itself (its Γ point), by finite
    displacements with ase.phonons: the modes an MD run in this very cell can show."""
    import tempfile

    from ase.phonons import Phonons

    with tempfile.TemporaryDirectory() as tmp:
        ph = Phonons(atoms, calc, supercell=(1, 1, 1), delta=0.01, name=f"{tmp}/gamma")
        ph.run()
        ph.read(acoustic=True)
        energies = ph.band_structure([[0.0, 0.0, 0.0]])[0]  # eV
        ph.clean()
    return np.sort(np.real(energies)) / EV_PER_THZ


def peaks_THz(nu: np.ndarray, g: np.ndarray, rel: float = 0.2, lo: float = 0.5) -> np.ndarray:
    """Local maxima of ``g`` above ``rel`` × its maximum and above ``lo`` THz."""
    sel = nu > lo
    top = g[sel].max()
    i = np.arange(1, len(g) - 1)
    is_peak = (g[i] > g[i - 1]) & (g[i] >= g[i + 1]) & (g[i] > rel * top) & sel[i]
    return nu[i[is_peak]]


def peak_THz(nu: np.ndarray, g: np.ndarray, lo: float = 0.5) -> float:
    """Frequency of the highest peak above ``lo`` THz."""
    sel = nu > lo
    return float(nu[sel][np.argmax(g[sel])])
