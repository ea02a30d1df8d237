"""Fast energy + forces for MD: compiled symmetry functions with hand-written derivatives.

The plain path (:meth:`BPNN.evaluate`) builds the descriptor from ~100 vectorised torch ops over
pairs and triplets and differentiates it with autograd; on one CPU thread nearly all of its time
goes to the triplet tensors (tens of thousands of rows, 8 features, forward and backward). Here the
same symmetry functions are two numba loops over centres, their pairs and their pairs of pairs:

1. ``_features``: G (N, F), exactly the sum ``symmetry_functions`` computes (to rounding);
2. the MLPs in torch, and dE/dG by autograd through them only (small: N x F);
3. ``_forces``: the chain rule dE/dD_p = sum_f dE/dG_if dG_if/dD_p written out per pair and per
   triplet, contracted on the fly (no Jacobian is stored), then F_i += dE/dD_p, F_j -= dE/dD_p and
   the virial sum_p D_p (x) dE/dD_p for the stress.

So the forces are the analytic gradient of the same energy function as the plain path
(``tests/test_fast_forces.py`` compares them with autograd to 1e-9 relative) — the property the
ML-MD proposal needs to stay time-reversible and volume-preserving.

Pairs come from a Verlet list with a skin (:class:`slhmc.potential.neighbors.VerletList`): pairs
within cutoff + skin, rebuilt when an atom has moved more than skin/2 since the last build. Pairs
and triplets beyond the cutoffs are skipped; they would contribute exactly 0 (the cosine cutoff
and its slope vanish there), so the energy is the same function of the positions whichever list
is in use. Triplets beyond the angular cutoff (r_jk >= rc) are skipped the same way, which is
about half of them.

numba compiles the two kernels on first use (a few seconds, cached on disk afterwards). Where
numba is missing or the model lives on a GPU, :class:`FastPotential` falls back to the torch
descriptor with autograd (still with the cached neighbour list).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from .network import BPNN, Evaluation
from .neighbors import VerletList

log = logging.getLogger(__name__)

try:
    from numba import njit

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - numba is a dependency; this keeps the torch path usable without it
    HAVE_NUMBA = False

    def njit(*args, **kwargs):  # type: ignore[no-redef]
        return lambda f: f


# Default Verlet skin (Å). At 300-1000 K an atom moves ~0.01 Å per 2-fs step, so a 0.5-Å skin is
# rebuilt every few tens of steps, while the extra pairs (6.5³/6³ = 1.27x) are only a distance test.
DEFAULT_SKIN = 0.5


@njit(cache=True, nogil=True)
def _pair_vectors(pos, cell, pi, pj, shifts):  # pragma: no cover - compiled
    n = pi.shape[0]
    vec = np.empty((n, 3))
    dist = np.empty(n)
    for p in range(n):
        a, b = pi[p], pj[p]
        s0, s1, s2 = shifts[p, 0], shifts[p, 1], shifts[p, 2]
        r2 = 0.0
        for c in range(3):
            v = pos[b, c] - pos[a, c] + (s0 * cell[0, c] + s1 * cell[1, c] + s2 * cell[2, c])
            vec[p, c] = v
            r2 += v * v
        dist[p] = math.sqrt(r2)
    return vec, dist


# Taylor coefficients of sin and cos to v^21 and v^20: on |v| <= pi/2 the truncation error is below
# 2e-17, so these equal libm's sin/cos to rounding (checked in tests/test_fast_forces.py).
_SIN = tuple((-1) ** k / math.factorial(2 * k + 1) for k in range(11))
_COS = tuple((-1) ** k / math.factorial(2 * k) for k in range(11))


@njit(cache=True, nogil=True, inline="always")
def _cutoff(r, half_k, rc):  # pragma: no cover - compiled
    """fc(r) = (cos(pi r / rc) + 1) / 2 = sin(v)^2, v = (pi / 2)(rc - r) / rc, and dfc/dr; r < rc.

    A polynomial instead of libm's sincos (18-25 ns a call here, the largest single cost of a
    triplet), and accurate to the last bits near the cutoff, where 1 + cos cancels.
    """
    v = half_k * (rc - r)
    x = v * v
    s, c = _SIN, _COS
    sv = v * (s[0] + x * (s[1] + x * (s[2] + x * (s[3] + x * (s[4] + x * (s[5] + x * (s[6] + x * (
        s[7] + x * (s[8] + x * (s[9] + x * s[10]))))))))))
    cv = c[0] + x * (c[1] + x * (c[2] + x * (c[3] + x * (c[4] + x * (c[5] + x * (c[6] + x * (
        c[7] + x * (c[8] + x * (c[9] + x * c[10])))))))))
    return sv * sv, -2.0 * half_k * sv * cv


@njit(cache=True, nogil=True, inline="always")
def _power_and_slope(x, n, n_int):  # pragma: no cover - compiled
    """(x**n, n x**(n-1)); by repeated multiplication when n is a small whole number ``n_int``."""
    if n_int == 1:
        return x, 1.0
    if n_int > 1:
        below = x  # x**(n-1)
        for _ in range(n_int - 2):
            below *= x
        return below * x, n * below
    return x**n, n * x ** (n - 1.0)


@njit(cache=True, nogil=True)
def _triplet_bound(dist, first, rca):  # pragma: no cover - compiled
    """Pairs of pairs within the angular cutoff, summed over centres: at least the triplet count."""
    total = 0
    for i in range(first.shape[0] - 1):
        n_close = 0
        for p in range(first[i], first[i + 1]):
            if dist[p] < rca:
                n_close += 1
        total += n_close * (n_close - 1) // 2
    return total


@njit(cache=True, nogil=True)
def _features(vec, dist, pj, first, species, g, tape, rc, rca, eta_r, rs, eta_a, zeta, zeta_int, lam, col, pair_slot,
              n_el, n_ang):  # pragma: no cover - compiled
    """G (N, F) as ``symmetry_functions`` computes it, into ``g``; returns the number of triplets.

    Pairs of centre i are first[i]:first[i + 1]. Also fills in what ``_forces`` needs so that it
    evaluates no exp/cos again (the "tape", arrays from ``_tape``): dG2/dr per pair and radial
    function, the angular pair factor pf = exp(-eta r^2) fc(r) and its slope per pair, and per
    triplet within the angular cutoff q = exp(-eta r_jk^2) fc(r_jk) and (dq/dr_jk)/r_jk, in the
    order in which ``_forces`` visits them. The buffers are kept between calls: fresh large arrays
    would cost a page fault per 4 kB on every step.
    """
    n_atoms = first.shape[0] - 1
    n_rad, n_eta, n_zl = eta_r.shape[0], eta_a.shape[0], zeta.shape[0]
    ang0 = n_el * n_rad
    rca2 = rca * rca
    rad_slope, pf, dpf, tq, tdq = tape
    g[:] = 0.0
    max_nb = 0
    for i in range(n_atoms):
        max_nb = max(max_nb, first[i + 1] - first[i])
    close = np.empty(max_nb, np.int64)
    inv_r = np.empty(max_nb)
    radial_k = 0.5 * math.pi / rc
    angular_k = 0.5 * math.pi / rca
    two_pow = np.empty(n_zl)
    for z in range(n_zl):
        two_pow[z] = 2.0 ** (1.0 - zeta[z])
    ang = np.empty(n_zl)
    t = 0
    for i in range(n_atoms):
        n_close = 0
        for p in range(first[i], first[i + 1]):
            r = dist[p]
            if r >= rc:
                continue
            el = species[pj[p]]
            fc, dfc = _cutoff(r, radial_k, rc)
            for k in range(n_rad):
                x = r - rs[k]
                gauss = math.exp(-eta_r[k] * x * x)
                g[i, el * n_rad + k] += gauss * fc
                rad_slope[p, k] = gauss * (dfc - 2.0 * eta_r[k] * x * fc)
            if r < rca:
                fca, dfca = _cutoff(r, angular_k, rca)
                for e in range(n_eta):
                    gauss = math.exp(-eta_a[e] * r * r)
                    pf[p, e] = gauss * fca
                    dpf[p, e] = gauss * (dfca - 2.0 * eta_a[e] * r * fca)
                close[n_close] = p
                inv_r[n_close] = 1.0 / r
                n_close += 1
        for ia in range(n_close):
            a = close[ia]
            ax, ay, az, inv_a = vec[a, 0], vec[a, 1], vec[a, 2], inv_r[ia]
            el_a = species[pj[a]]
            for ib in range(ia + 1, n_close):
                b = close[ib]
                bx, by, bz = vec[b, 0], vec[b, 1], vec[b, 2]
                cx, cy, cz = bx - ax, by - ay, bz - az
                rjk2 = cx * cx + cy * cy + cz * cz
                if rjk2 >= rca2:
                    continue  # fc(r_jk) = 0: the triplet adds exactly nothing
                rjk = math.sqrt(rjk2)
                fcjk, dfcjk = _cutoff(rjk, angular_k, rca)
                cos_t = (ax * bx + ay * by + az * bz) * (inv_a * inv_r[ib])
                for z in range(n_zl):
                    ang[z] = two_pow[z] * _power_and_slope(1.0 + lam[z] * cos_t, zeta[z], zeta_int[z])[0]
                off = ang0 + pair_slot[el_a, species[pj[b]]] * n_ang
                for e in range(n_eta):
                    gjk = math.exp(-eta_a[e] * rjk2)
                    q = gjk * fcjk
                    tq[t, e] = q
                    tdq[t, e] = gjk * (dfcjk - 2.0 * eta_a[e] * rjk * fcjk) / rjk
                    radial = pf[a, e] * pf[b, e] * q
                    for z in range(n_zl):
                        g[i, off + col[e, z]] += radial * ang[z]
                t += 1
    return t


@njit(cache=True, nogil=True)
def _forces(vec, dist, pi, pj, first, species, dedg, tape, rc, rca, eta_r, rs, eta_a, zeta, zeta_int, lam, col, pair_slot,
            n_el, n_ang):  # pragma: no cover - compiled
    """Forces (N, 3) and the virial sum_p D_p (x) dE/dD_p (3, 3) from dE/dG ``dedg`` (N, F)."""
    rad_slope, pf, dpf, tq, tdq = tape
    n_atoms = first.shape[0] - 1
    n_rad, n_eta, n_zl = eta_r.shape[0], eta_a.shape[0], zeta.shape[0]
    ang0 = n_el * n_rad
    rca2 = rca * rca
    forces = np.zeros((n_atoms, 3))
    virial = np.zeros((3, 3))
    max_nb = 0
    for i in range(n_atoms):
        max_nb = max(max_nb, first[i + 1] - first[i])
    grad = np.zeros((max_nb, 3))  # dE/dD_p of the centre's pairs
    close = np.empty(max_nb, np.int64)
    inv_r = np.empty(max_nb)
    two_pow = np.empty(n_zl)
    for z in range(n_zl):
        two_pow[z] = 2.0 ** (1.0 - zeta[z])
    gq = np.empty(n_eta)
    ang = np.empty(n_zl)
    dang = np.empty(n_zl)
    t = 0
    for i in range(n_atoms):
        p0 = first[i]
        n_close = 0
        for p in range(p0, first[i + 1]):
            r = dist[p]
            if r >= rc:
                grad[p - p0, 0] = grad[p - p0, 1] = grad[p - p0, 2] = 0.0
                continue
            col0 = species[pj[p]] * n_rad
            dedr = 0.0
            for k in range(n_rad):
                dedr += dedg[i, col0 + k] * rad_slope[p, k]
            s = dedr / r
            for c in range(3):
                grad[p - p0, c] = s * vec[p, c]
            if r < rca:
                close[n_close] = p
                inv_r[n_close] = 1.0 / r
                n_close += 1
        for ia in range(n_close):
            a = close[ia]
            ax, ay, az, inv_a = vec[a, 0], vec[a, 1], vec[a, 2], inv_r[ia]
            el_a = species[pj[a]]
            ga_x = ga_y = ga_z = 0.0
            for ib in range(ia + 1, n_close):
                b = close[ib]
                bx, by, bz = vec[b, 0], vec[b, 1], vec[b, 2]
                cx, cy, cz = bx - ax, by - ay, bz - az
                if cx * cx + cy * cy + cz * cz >= rca2:
                    continue
                inv_b = inv_r[ib]
                inv_ab = inv_a * inv_b
                cos_t = (ax * bx + ay * by + az * bz) * inv_ab
                for z in range(n_zl):
                    value, slope = _power_and_slope(1.0 + lam[z] * cos_t, zeta[z], zeta_int[z])
                    ang[z] = two_pow[z] * value
                    dang[z] = two_pow[z] * lam[z] * slope
                off = ang0 + pair_slot[el_a, species[pj[b]]] * n_ang
                # E depends on the triplet through R_e = pf_a pf_b q(r_jk) and Ang_z(cos)
                de_dra = de_drb = de_drjk = 0.0
                for e in range(n_eta):
                    gr = 0.0  # dE/dR_e
                    for z in range(n_zl):
                        gr += dedg[i, off + col[e, z]] * ang[z]
                    pa, pb, q = pf[a, e], pf[b, e], tq[t, e]
                    de_dra += gr * dpf[a, e] * pb * q
                    de_drb += gr * pa * dpf[b, e] * q
                    de_drjk += gr * pa * pb * tdq[t, e]  # already divided by r_jk
                    gq[e] = pa * pb * q
                de_dcos = 0.0
                for z in range(n_zl):
                    ga = 0.0  # dE/dAng_z
                    for e in range(n_eta):
                        ga += dedg[i, off + col[e, z]] * gq[e]
                    de_dcos += ga * dang[z]
                t += 1
                # d cos/dA = (B/rb - cos A/ra)/ra, d r_jk/dA = -C/r_jk; the same with a and b swapped
                sa = (de_dra - de_dcos * cos_t * inv_a) * inv_a
                sb = (de_drb - de_dcos * cos_t * inv_b) * inv_b
                sab = de_dcos * inv_ab
                ga_x += sa * ax + sab * bx - de_drjk * cx
                ga_y += sa * ay + sab * by - de_drjk * cy
                ga_z += sa * az + sab * bz - de_drjk * cz
                kb = b - p0
                grad[kb, 0] += sb * bx + sab * ax + de_drjk * cx
                grad[kb, 1] += sb * by + sab * ay + de_drjk * cy
                grad[kb, 2] += sb * bz + sab * az + de_drjk * cz
            ka = a - p0
            grad[ka, 0] += ga_x
            grad[ka, 1] += ga_y
            grad[ka, 2] += ga_z
        # D_p = r_j - r_i + S cell: dE/dr_j += dE/dD_p, dE/dr_i -= dE/dD_p; F = -dE/dr
        for p in range(p0, first[i + 1]):
            j = pj[p]
            for c in range(3):
                gc = grad[p - p0, c]
                forces[i, c] += gc
                forces[j, c] -= gc
                for d in range(3):
                    virial[d, c] += vec[p, d] * gc
    return forces, virial


class FastPotential:
    """Energy, forces (and stress) of a :class:`BPNN` for successive MD steps, with a Verlet list.

    Same results as ``model.evaluate`` (an :class:`Evaluation`, extrapolation counts included) to
    rounding, several times faster on a CPU. Holds neighbour-list state: use one per trajectory or
    calculator, not one shared between structures evaluated alternately (that is correct too, but
    rebuilds the list every call). The model is read at every call, so weights updated in place
    are used at once.

    ``compiled``: use the numba kernels (default: when numba is importable and the model is on the
    CPU); otherwise torch's descriptor and autograd with the same neighbour list.
    """

    def __init__(self, model: BPNN, skin: float = DEFAULT_SKIN, compiled: bool | None = None) -> None:
        self.model = model
        self.neighbors = VerletList(model.spec.cutoff, skin)
        if compiled is None:
            compiled = HAVE_NUMBA and model.device.type == "cpu"
        if compiled and not HAVE_NUMBA:
            raise RuntimeError("compiled=True needs numba")
        self.compiled = bool(compiled)
        spec = model.spec
        etas = sorted({a[0] for a in spec.angular})
        zeta_lams = sorted({(a[1], a[2]) for a in spec.angular})
        col = np.zeros((len(etas), len(zeta_lams)), dtype=np.int64)
        for c, (eta, zeta, lam) in enumerate(spec.angular):
            col[etas.index(eta), zeta_lams.index((zeta, lam))] = c
        n_el = spec.n_elements
        pair_slot = np.zeros((n_el, n_el), dtype=np.int64)
        rows, cols = np.triu_indices(n_el)
        pair_slot[rows, cols] = pair_slot[cols, rows] = np.arange(len(rows))
        self._params = (
            float(spec.cutoff), float(spec.angular_cutoff),
            np.array([r[0] for r in spec.radial], dtype=np.float64), np.array([r[1] for r in spec.radial]),
            np.array(etas, dtype=np.float64), np.array([z for z, _ in zeta_lams], dtype=np.float64),
            np.array([int(z) if z == int(z) and 1 <= z <= 64 else 0 for z, _ in zeta_lams], dtype=np.int64),
            np.array([lam for _, lam in zeta_lams], dtype=np.float64), col, pair_slot,
            n_el, len(spec.angular),
        )
        self._numbers: np.ndarray | None = None
        self._species: torch.Tensor | None = None
        self._species_np: np.ndarray | None = None
        self._sizes: tuple[int, int, int] | None = None
        self._g = np.empty((0, 0))
        self._tape: tuple = ()

    def _species_of(self, numbers: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        numbers = np.asarray(numbers)
        if self._numbers is None or not np.array_equal(numbers, self._numbers):
            self._species = self.model.species_index(numbers)
            self._species_np = self._species.cpu().numpy().astype(np.int64)
            self._numbers = numbers.copy()
        return self._species, self._species_np

    def _workspace(self, n_atoms: int, dist: np.ndarray) -> tuple[np.ndarray, tuple]:
        """Buffers for the kernels, reused while large enough (grown by 25 % when not)."""
        spec = self.model.spec
        n_eta = self._params[4].shape[0]
        need = (n_atoms, len(dist), int(_triplet_bound(dist, self.neighbors.first, spec.angular_cutoff)))
        have = self._sizes
        if have is None or have[0] != need[0] or have[1] < need[1] or have[2] < need[2]:
            n_pair = int(need[1] * 1.25) if have is None or have[1] < need[1] else have[1]
            n_trip = int(need[2] * 1.25) if have is None or have[2] < need[2] else have[2]
            self._g = np.empty((n_atoms, spec.n_features))
            self._tape = (np.empty((n_pair, len(spec.radial))), np.empty((n_pair, n_eta)), np.empty((n_pair, n_eta)),
                          np.empty((n_trip, n_eta)), np.empty((n_trip, n_eta)))
            self._sizes = (n_atoms, n_pair, n_trip)
        return self._g, self._tape

    def features(self, numbers: np.ndarray, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
        """The symmetry functions G (N, F), float64, as ``model.features`` gives them (a copy)."""
        if not self.compiled:
            raise RuntimeError("features() needs the compiled kernels; use model.features")
        return self._descriptor(numbers, positions, cell, pbc)[2].copy()

    def _descriptor(self, numbers: np.ndarray, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> tuple:
        species, species_np = self._species_of(numbers)
        nl = self.neighbors
        nl.update(positions, cell, pbc)
        vec, dist = _pair_vectors(positions, cell, nl.i, nl.j, nl.shifts)
        g, tape = self._workspace(len(positions), dist)
        _features(vec, dist, nl.j, nl.first, species_np, g, tape, *self._params)
        return species, species_np, g, (vec, dist, tape)

    def evaluate(
        self, numbers: np.ndarray, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, stress: bool = False
    ) -> Evaluation:
        """As :meth:`BPNN.evaluate`: energy (eV), forces (eV/Å), stress (eV/Å³) if asked for, and
        the extrapolation counts."""
        positions = np.ascontiguousarray(positions, dtype=np.float64)
        cell = np.ascontiguousarray(cell, dtype=np.float64)
        pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
        model, nl = self.model, self.neighbors
        if not self.compiled:
            nl.update(positions, cell, pbc)
            dev = model.device
            pairs = (torch.from_numpy(nl.i).to(dev), torch.from_numpy(nl.j).to(dev), torch.from_numpy(nl.shifts).to(dev))
            return model.evaluate(numbers, positions, cell, pbc, stress=stress, pairs=pairs)
        species, species_np, g, (vec, dist, tape) = self._descriptor(numbers, positions, cell, pbc)
        # the MLPs in the model's dtype; G and dE/dG cross over as float64
        feats = torch.from_numpy(g).to(model.dtype).requires_grad_(True)
        energy = model.atomic_energies(feats, species).sum()
        (dedg,) = torch.autograd.grad(energy, feats)
        forces, virial = _forces(vec, dist, nl.i, nl.j, nl.first, species_np,
                                 np.ascontiguousarray(dedg.numpy(), dtype=np.float64), tape, *self._params)
        sigma = None
        if stress:
            volume = abs(float(np.linalg.det(cell)))
            if volume <= 0:
                raise ValueError("stress needs a cell with non-zero volume")
            sigma = 0.5 * (virial + virial.T) / volume
        counts = model.count_extrapolating(feats.detach(), species)
        per_element = None if counts is None else tuple(counts.tolist())
        return Evaluation(float(energy.detach()), forces, sigma,
                          None if per_element is None else sum(per_element), per_element)
