"""numba kernels of :mod:`slhmc.potential.fast`: the symmetry functions and their analytic gradient.

Kept apart so that importing the potential does not import numba (about a second); fast.py loads
this module when a :class:`FastPotential` first needs it. See fast.py for what they compute and why.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _pair_vectors(pos, cell, pi, pj, shifts):
    """D_p = r_j - r_i + S_p cell (P, 3) and |D_p|."""
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
def _cutoff(r, half_k, rc):
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
def _power_and_slope(x, n, n_int):
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
def _triplet_bound(dist, first, rca):
    """Pairs of pairs within the angular cutoff, summed over centres: at least the triplet count."""
    total = 0
    for i in range(first.shape[0] - 1):
        n_close = 0
        for p in range(first[i], first[i + 1]):
            if dist[p] < rca:
                n_close += 1
        total += n_close * (n_close - 1) // 2
    return total


@njit(cache=True, nogil=True, fastmath={"contract", "reassoc"})
def _features(vec, dist, pj, first, species, g, tape,
              rc, rca, eta_r, rs, eta_a, zeta, zeta_int, lam, col_eta, col_zl, pair_slot, n_el, n_ang):
    """G (N, F) as ``symmetry_functions`` computes it, into ``g``; returns the number of triplets.

    Pairs of centre i are first[i]:first[i + 1]. Per centre, the triplets within the angular cutoff
    are first gathered by element-pair slot; each slot's are then processed in flat loops over
    triplets (structure of arrays), which LLVM vectorises (sqrt, the cutoff polynomial, powers,
    products, the sums into G); only exp stays a scalar call. That layout made the kernel ~1.4x
    faster than one loop doing everything per triplet.

    The tape (``FastPotential._workspace``) receives what ``_forces`` needs so that it evaluates no
    exp again: per pair dG2/dr of each radial function, the angular pair factor pf = exp(-eta r^2)
    fc(r), its slope and 1/r; per triplet its two pairs, q = exp(-eta r_jk^2) fc(r_jk) and
    (dq/dr_jk)/r_jk; per (centre, slot) the start of its triplets.
    """
    n_atoms = first.shape[0] - 1
    n_rad, n_eta, n_zl = eta_r.shape[0], eta_a.shape[0], zeta.shape[0]
    n_slots = n_el * (n_el + 1) // 2
    ang0 = n_el * n_rad
    rca2 = rca * rca
    rad_slope, pf, dpf, inv_r, ta, tb, tq, tdq, seg = tape
    g[:] = 0.0
    max_close = 0
    for i in range(n_atoms):
        n_close = 0
        for p in range(first[i], first[i + 1]):
            if dist[p] < rca:
                n_close += 1
        max_close = max(max_close, n_close)
    max_t = max(max_close * (max_close - 1) // 2, 1)
    close = np.empty(max_close, np.int64)
    # a centre's triplets within the angular cutoff (candidates are written before the test, kept by
    # advancing the count: no unpredictable branch), then sorted by element-pair slot
    c_a = np.empty(max_t + 1, np.int64)
    c_b = np.empty(max_t + 1, np.int64)
    c_r2 = np.empty(max_t + 1)
    c_dot = np.empty(max_t + 1)
    c_s = np.empty(max_t + 1, np.int64)
    if n_slots == 1:
        buf_a, buf_b, buf_r2, buf_dot = c_a, c_b, c_r2, c_dot
    else:
        buf_a = np.empty(max_t + 1, np.int64)
        buf_b = np.empty(max_t + 1, np.int64)
        buf_r2 = np.empty(max_t + 1)
        buf_dot = np.empty(max_t + 1)
    slot_start = np.zeros(n_slots + 1, np.int64)
    cnt = np.zeros(n_slots, np.int64)
    w_r = np.empty(max_t)
    w_fc = np.empty(max_t)
    w_dfc = np.empty(max_t)
    w_base = np.empty(max_t)
    w_ang = np.empty((n_zl, max_t))
    w_rad = np.empty((n_eta, max_t))
    radial_k = 0.5 * math.pi / rc
    angular_k = 0.5 * math.pi / rca
    two_pow = np.empty(n_zl)
    for z in range(n_zl):
        two_pow[z] = 2.0 ** (1.0 - zeta[z])
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
                inv_r[p] = 1.0 / r
                n_close += 1
        # the triplets within the angular cutoff (r_jk < rc; beyond it fc = 0: they add exactly
        # nothing, about half of the pairs of pairs)
        n_kept = 0
        for ia in range(n_close):
            a = close[ia]
            ax, ay, az = vec[a, 0], vec[a, 1], vec[a, 2]
            el_a = species[pj[a]]
            for ib in range(ia + 1, n_close):
                b = close[ib]
                bx, by, bz = vec[b, 0], vec[b, 1], vec[b, 2]
                cx, cy, cz = bx - ax, by - ay, bz - az
                rjk2 = cx * cx + cy * cy + cz * cz
                c_a[n_kept] = a
                c_b[n_kept] = b
                c_r2[n_kept] = rjk2
                c_dot[n_kept] = ax * bx + ay * by + az * bz
                c_s[n_kept] = pair_slot[el_a, species[pj[b]]]
                n_kept += rjk2 < rca2
        if n_slots == 1:
            slot_start[1] = n_kept
        else:  # counting sort by slot
            slot_start[:] = 0
            for k in range(n_kept):
                slot_start[c_s[k] + 1] += 1
            for s in range(n_slots):
                slot_start[s + 1] += slot_start[s]
            for s in range(n_slots):
                cnt[s] = slot_start[s]
            for k in range(n_kept):
                s = c_s[k]
                kk = cnt[s]
                buf_a[kk], buf_b[kk], buf_r2[kk], buf_dot[kk] = c_a[k], c_b[k], c_r2[k], c_dot[k]
                cnt[s] = kk + 1
        for s in range(n_slots):
            seg[i * n_slots + s] = t
            k0 = slot_start[s]
            m = slot_start[s + 1] - k0
            if m == 0:
                continue
            for k in range(m):
                rjk = math.sqrt(buf_r2[k0 + k])
                fc, dfc = _cutoff(rjk, angular_k, rca)
                w_r[k] = rjk
                w_fc[k] = fc
                w_dfc[k] = dfc
                w_base[k] = buf_dot[k0 + k] * inv_r[buf_a[k0 + k]] * inv_r[buf_b[k0 + k]]
                ta[t + k] = buf_a[k0 + k]
                tb[t + k] = buf_b[k0 + k]
            for z in range(n_zl):  # Ang_z = 2^(1-zeta) (1 + lambda cos)^zeta
                lz, nz, cz = lam[z], zeta_int[z], two_pow[z]
                if nz > 0:
                    for k in range(m):
                        w_ang[z, k] = 1.0 + lz * w_base[k]
                    for _ in range(nz - 1):
                        for k in range(m):
                            w_ang[z, k] *= 1.0 + lz * w_base[k]
                    for k in range(m):
                        w_ang[z, k] *= cz
                else:
                    for k in range(m):
                        w_ang[z, k] = cz * (1.0 + lz * w_base[k]) ** zeta[z]
            for e in range(n_eta):
                eta = eta_a[e]
                for k in range(m):
                    gjk = math.exp(-eta * buf_r2[k0 + k])
                    fc, rjk = w_fc[k], w_r[k]
                    q = gjk * fc
                    tq[e, t + k] = q
                    tdq[e, t + k] = gjk * (w_dfc[k] - 2.0 * eta * rjk * fc) / rjk
                    w_rad[e, k] = pf[ta[t + k], e] * pf[tb[t + k], e] * q
            off = ang0 + s * n_ang
            for f in range(n_ang):  # G4 column f: radial part of its eta x angular part of its (zeta, lambda)
                ef, zf = col_eta[f], col_zl[f]
                acc = 0.0
                for k in range(m):
                    acc += w_rad[ef, k] * w_ang[zf, k]
                g[i, off + f] += acc
            t += m
    seg[n_atoms * n_slots] = t
    return t


@njit(cache=True, nogil=True, fastmath={"contract", "reassoc"})
def _forces(vec, dist, pj, first, species, dedg, tape,
            rc, rca, eta_r, rs, eta_a, zeta, zeta_int, lam, col_eta, col_zl, pair_slot, n_el, n_ang):
    """Forces (N, 3) and the virial sum_p D_p (x) dE/dD_p (3, 3) from dE/dG ``dedg`` (N, F).

    The chain rule through the tape of ``_features``: per triplet, E depends on R_e = pf_a pf_b q_e
    and on Ang_z(cos t); dE/dR_e and dE/dcos come from the slot's dE/dG (constant within a centre
    and slot), then dE/dD_a and dE/dD_b from dr_a/dD_a = D_a/r_a, dcos/dD_a = (D_b/r_b - cos
    D_a/r_a)/r_a and dr_jk/dD_a = -(D_b - D_a)/r_jk (and the same with a and b swapped).
    """
    rad_slope, pf, dpf, inv_r, ta, tb, tq, tdq, seg = tape
    n_atoms = first.shape[0] - 1
    n_rad, n_eta, n_zl = eta_r.shape[0], eta_a.shape[0], zeta.shape[0]
    n_slots = n_el * (n_el + 1) // 2
    ang0 = n_el * n_rad
    forces = np.zeros((n_atoms, 3))
    virial = np.zeros((3, 3))
    max_nb = 0
    max_t = 1
    for i in range(n_atoms):
        max_nb = max(max_nb, first[i + 1] - first[i])
        for s in range(n_slots):
            max_t = max(max_t, seg[i * n_slots + s + 1] - seg[i * n_slots + s])
    grad = np.zeros((max_nb, 3))  # dE/dD_p of the centre's pairs
    two_pow = np.empty(n_zl)
    for z in range(n_zl):
        two_pow[z] = 2.0 ** (1.0 - zeta[z])
    w_cos = np.empty(max_t)
    w_ang = np.empty((n_zl, max_t))
    w_dang = np.empty((n_zl, max_t))
    w_rad = np.empty((n_eta, max_t))
    w_drad = np.empty((n_eta, max_t))  # dE/dR_e
    w_dcos = np.empty(max_t)  # dE/dcos
    s_a = np.empty(max_t)
    s_b = np.empty(max_t)
    s_ab = np.empty(max_t)
    s_c = np.empty(max_t)
    w = np.empty(n_ang)
    for i in range(n_atoms):
        p0 = first[i]
        for p in range(p0, first[i + 1]):
            r = dist[p]
            if r >= rc:
                grad[p - p0, 0] = grad[p - p0, 1] = grad[p - p0, 2] = 0.0
                continue
            col0 = species[pj[p]] * n_rad
            dedr = 0.0
            for k in range(n_rad):
                dedr += dedg[i, col0 + k] * rad_slope[p, k]
            sc = dedr / r
            for c in range(3):
                grad[p - p0, c] = sc * vec[p, c]
        for s in range(n_slots):
            t0 = seg[i * n_slots + s]
            m = seg[i * n_slots + s + 1] - t0
            if m == 0:
                continue
            off = ang0 + s * n_ang
            for f in range(n_ang):
                w[f] = dedg[i, off + f]
            for k in range(m):
                a, b = ta[t0 + k], tb[t0 + k]
                w_cos[k] = (vec[a, 0] * vec[b, 0] + vec[a, 1] * vec[b, 1] + vec[a, 2] * vec[b, 2]) * inv_r[a] * inv_r[b]
            for z in range(n_zl):
                lz, nz, cz = lam[z], zeta_int[z], two_pow[z]
                if nz > 0:
                    for k in range(m):
                        w_dang[z, k] = 1.0
                    for _ in range(nz - 1):
                        for k in range(m):
                            w_dang[z, k] *= 1.0 + lz * w_cos[k]
                    for k in range(m):
                        w_ang[z, k] = cz * w_dang[z, k] * (1.0 + lz * w_cos[k])
                        w_dang[z, k] *= cz * lz * nz
                else:
                    for k in range(m):
                        base = 1.0 + lz * w_cos[k]
                        w_ang[z, k] = cz * base ** zeta[z]
                        w_dang[z, k] = cz * lz * zeta[z] * base ** (zeta[z] - 1.0)
            for e in range(n_eta):
                for k in range(m):
                    w_rad[e, k] = pf[ta[t0 + k], e] * pf[tb[t0 + k], e] * tq[e, t0 + k]
                    w_drad[e, k] = 0.0
            for k in range(m):
                w_dcos[k] = 0.0
            for f in range(n_ang):
                ef, zf, wf = col_eta[f], col_zl[f], w[f]
                for k in range(m):
                    w_drad[ef, k] += wf * w_ang[zf, k]
                    w_dcos[k] += wf * w_rad[ef, k] * w_dang[zf, k]
            for k in range(m):
                a, b = ta[t0 + k], tb[t0 + k]
                de_dra = de_drb = de_drjk = 0.0
                for e in range(n_eta):
                    gr, pa, pb, q = w_drad[e, k], pf[a, e], pf[b, e], tq[e, t0 + k]
                    de_dra += gr * dpf[a, e] * pb * q
                    de_drb += gr * pa * dpf[b, e] * q
                    de_drjk += gr * pa * pb * tdq[e, t0 + k]
                inv_a, inv_b, cos_t, dc = inv_r[a], inv_r[b], w_cos[k], w_dcos[k]
                s_a[k] = (de_dra - dc * cos_t * inv_a) * inv_a
                s_b[k] = (de_drb - dc * cos_t * inv_b) * inv_b
                s_ab[k] = dc * inv_a * inv_b
                s_c[k] = de_drjk  # tdq is (dq/dr_jk)/r_jk: this multiplies D_b - D_a
            for k in range(m):  # the scatter into the pairs' gradients stays scalar
                a, b = ta[t0 + k], tb[t0 + k]
                sa, sb, sab, sc = s_a[k], s_b[k], s_ab[k], s_c[k]
                ax, ay, az = vec[a, 0], vec[a, 1], vec[a, 2]
                bx, by, bz = vec[b, 0], vec[b, 1], vec[b, 2]
                cx, cy, cz = bx - ax, by - ay, bz - az
                ka, kb = a - p0, b - p0
                grad[ka, 0] += sa * ax + sab * bx - sc * cx
                grad[ka, 1] += sa * ay + sab * by - sc * cy
                grad[ka, 2] += sa * az + sab * bz - sc * cz
                grad[kb, 0] += sb * bx + sab * ax + sc * cx
                grad[kb, 1] += sb * by + sab * ay + sc * cy
                grad[kb, 2] += sb * bz + sab * az + sc * cz
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
