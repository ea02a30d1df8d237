"""Behler–Parrinello atom-centred symmetry functions (G2 radial, G4 angular), element-resolved.

For atom i with neighbours j, k (all periodic images within the cutoff):

    G2_i[Zj; eta, rs]        = sum_j exp(-eta (r_ij - rs)^2) fc(r_ij)
    G4_i[{Zj,Zk}; eta, z, l] = 2^(1-z) sum_{j<k} (1 + l cos t_ijk)^z
                               exp(-eta (r_ij^2 + r_ik^2 + r_jk^2)) fc(r_ij) fc(r_ik) fc(r_jk)

with the cosine cutoff fc(r) = (cos(pi r / rc) + 1) / 2 for r < rc, else 0 (Behler, J. Chem. Phys.
134, 074106 (2011)). G2 uses ``cutoff``; G4 uses ``angular_cutoff`` (the number of triplets grows
as the cube of it). Lengths in Å, eta in 1/Å².

Everything is vectorised torch over pairs and triplets so that forces (and the stress) are the
exact autograd gradient of the energy: that exactness is what keeps the HMC proposal reversible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# The descriptor's shape where no config key sets it: the one place these numbers live.
N_RADIAL = 8  # radial (G2) functions per neighbour element
ANGULAR_CUTOFF_MAX = 4.5  # Å: the angular cutoff when none is given is min(cutoff, this)
ANGULAR_ETAS = (0.005, 0.05)  # 1/Å², angular (G4) widths
ANGULAR_ZETAS = (1.0, 4.0)
ANGULAR_LAMBDAS = (-1.0, 1.0)


def default_angular_cutoff(cutoff: float, angular_cutoff: float | None = None) -> float:
    """The G4 cutoff (Å): ``angular_cutoff`` when given, else min(cutoff, ANGULAR_CUTOFF_MAX) (the
    number of triplets grows as the cube of it)."""
    return min(cutoff, ANGULAR_CUTOFF_MAX) if angular_cutoff is None else float(angular_cutoff)


@dataclass(frozen=True)
class DescriptorSpec:
    """The full set of symmetry functions: which elements, cutoffs, and parameters."""

    elements: tuple[int, ...]  # atomic numbers, sorted; the order of the per-element networks
    cutoff: float  # Å, radial (G2) cutoff
    angular_cutoff: float  # Å, angular (G4) cutoff, <= cutoff
    radial: tuple[tuple[float, float], ...]  # (eta 1/Å², rs Å)
    angular: tuple[tuple[float, float, float], ...]  # (eta 1/Å², zeta, lambda)

    @classmethod
    def default(
        cls,
        elements: list[int] | tuple[int, ...],
        cutoff: float,
        angular_cutoff: float | None = None,
        n_radial: int = N_RADIAL,
    ) -> DescriptorSpec:
        """Parameters generated from the cutoffs (Å); a run takes them from ``[potential]``.

        Radial: ``n_radial`` Gaussians centred evenly on [1 Å, cutoff - 0.5 Å] with width equal to
        their spacing (the "shifted" scheme of Behler 2011 / Imbalzano et al., J. Chem. Phys. 148,
        241730 (2018)). Angular: eta in ANGULAR_ETAS (1/Å²), zeta in ANGULAR_ZETAS, lambda = ±1, the
        customary small set of Behler 2011; the angular cutoff as :func:`default_angular_cutoff`.
        """
        if cutoff <= 1.5:
            raise ValueError(f"cutoff must be > 1.5 Å, got {cutoff}")
        rc_ang = default_angular_cutoff(cutoff, angular_cutoff)
        if not 0 < rc_ang <= cutoff:
            raise ValueError(f"angular_cutoff must be in (0, cutoff], got {rc_ang}")
        centres = torch.linspace(1.0, cutoff - 0.5, n_radial).tolist()
        spacing = (cutoff - 1.5) / max(n_radial - 1, 1)
        eta = 1.0 / (2.0 * spacing**2)
        radial = tuple((round(eta, 10), round(rs, 10)) for rs in centres)
        angular = tuple(
            (eta_a, zeta, lam) for eta_a in ANGULAR_ETAS for zeta in ANGULAR_ZETAS for lam in ANGULAR_LAMBDAS
        )
        return cls(tuple(sorted(set(int(z) for z in elements))), float(cutoff), rc_ang, radial, angular)

    @property
    def n_elements(self) -> int:
        return len(self.elements)

    @property
    def n_pairs(self) -> int:
        return self.n_elements * (self.n_elements + 1) // 2

    @property
    def n_features(self) -> int:
        return self.n_elements * len(self.radial) + self.n_pairs * len(self.angular)

    def to_dict(self) -> dict:
        return {
            "elements": list(self.elements),
            "cutoff": self.cutoff,
            "angular_cutoff": self.angular_cutoff,
            "radial": [list(p) for p in self.radial],
            "angular": [list(p) for p in self.angular],
        }

    @classmethod
    def from_dict(cls, d: dict) -> DescriptorSpec:
        return cls(
            tuple(int(z) for z in d["elements"]),
            float(d["cutoff"]),
            float(d["angular_cutoff"]),
            tuple((float(a), float(b)) for a, b in d["radial"]),
            tuple((float(a), float(b), float(c)) for a, b, c in d["angular"]),
        )


def cosine_cutoff(r: torch.Tensor, rc: float) -> torch.Tensor:
    """0.5 (cos(pi r / rc) + 1) for r < rc, else 0.

    Written with a clamp instead of a branch: at r = rc the function and its slope are both zero,
    so clamping is exact, and it costs one elementwise op less than ``torch.where`` (forward and
    backward) on the largest tensors of the descriptor.
    """
    return 0.5 * (torch.cos((math.pi / rc) * r.clamp(max=rc)) + 1.0)


def _int_power(x: torch.Tensor, n: float) -> torch.Tensor:
    """x**n, by repeated squaring when n is a small whole number (much cheaper than pow)."""
    if n != int(n) or not 1 <= n <= 64:
        return x**n
    n, result, base = int(n), None, x
    while n:
        if n & 1:
            result = base if result is None else result * base
        n >>= 1
        if n:
            base = base * base
    return result


def element_pair_index(n_elements: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(n_el, n_el) table: unordered element pair {a, b} -> its angular slot (row-major upper triangle)."""
    table = torch.zeros(n_elements, n_elements, dtype=torch.long, device=device)
    rows, cols = torch.triu_indices(n_elements, n_elements, device=device)
    table[rows, cols] = torch.arange(rows.numel(), device=device)
    table[cols, rows] = table[rows, cols]
    return table


def triplets(center: torch.Tensor, n_atoms: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All unordered pairs (a, b), a < b, of entries of ``center`` that share the same centre.

    Returns indices into ``center``. Vectorised: pairs are grouped by centre, and a triangular
    index set of the largest group is masked by each centre's neighbour count.
    """
    if center.numel() == 0:
        empty = torch.zeros(0, dtype=torch.long, device=center.device)
        return empty, empty
    order = torch.argsort(center, stable=True)
    counts = torch.bincount(center, minlength=n_atoms)
    starts = torch.cumsum(counts, 0) - counts
    m = int(counts.max())
    a, b = torch.triu_indices(m, m, offset=1, device=center.device)
    c_idx, t_idx = (b.unsqueeze(0) < counts.unsqueeze(1)).nonzero(as_tuple=True)
    return order[starts[c_idx] + a[t_idx]], order[starts[c_idx] + b[t_idx]]


def symmetry_functions(
    spec: DescriptorSpec,
    species: torch.Tensor,
    vectors: torch.Tensor,
    i: torch.Tensor,
    j: torch.Tensor,
) -> torch.Tensor:
    """G (n_atoms, n_features) from pair vectors ``vectors[p] = r_j - r_i`` (+ image shift).

    ``species`` holds element indices (0..n_elements-1) into ``spec.elements``; ``i``, ``j`` the
    full pair list within ``spec.cutoff``. Feature layout: for each neighbour element, the radial
    set; then for each unordered neighbour-element pair (row-major upper triangle), the angular set.
    """
    n_atoms = species.shape[0]
    n_el = spec.n_elements
    dtype, device = vectors.dtype, vectors.device
    dist = torch.linalg.norm(vectors, dim=1)

    eta_r, rs = torch.tensor(spec.radial, dtype=dtype, device=device).T
    g2_terms = torch.exp(-eta_r * (dist.unsqueeze(1) - rs) ** 2) * cosine_cutoff(dist, spec.cutoff).unsqueeze(1)
    n_rad = len(spec.radial)
    g2 = torch.zeros(n_atoms * n_el, n_rad, dtype=dtype, device=device)
    g2 = g2.index_add(0, i * n_el + species[j], g2_terms).reshape(n_atoms, n_el * n_rad)

    n_ang = len(spec.angular)
    g4 = torch.zeros(n_atoms * spec.n_pairs, n_ang, dtype=dtype, device=device)
    close = (dist < spec.angular_cutoff).nonzero(as_tuple=True)[0]
    pa, pb = triplets(i[close], n_atoms)
    if pa.numel():
        # G4 = 2^(1-ζ) (1 + λ cos θ)^ζ exp(-η (r_ij² + r_ik² + r_jk²)) fc(r_ij) fc(r_ik) fc(r_jk)
        # factorises into a radial part per distinct η and an angular part per distinct (ζ, λ); the
        # per-pair factors exp(-η r²) fc(r) are computed once per pair, not once per triplet.
        rc = spec.angular_cutoff
        etas = sorted({a[0] for a in spec.angular})
        zeta_lams = sorted({(a[1], a[2]) for a in spec.angular})
        eta_t = torch.tensor(etas, dtype=dtype, device=device)
        # index_select, not fancy indexing: its backward is index_add, far cheaper on CPU than index_put
        d_close, v_close = dist.index_select(0, close), vectors.index_select(0, close)
        pair_factor = torch.exp(-eta_t * d_close.unsqueeze(1) ** 2) * cosine_cutoff(d_close, rc).unsqueeze(1)
        v_ij, v_ik = v_close.index_select(0, pa), v_close.index_select(0, pb)
        r_jk = torch.linalg.norm(v_ik - v_ij, dim=1)
        radial_part = (
            pair_factor.index_select(0, pa) * pair_factor.index_select(0, pb)
            * torch.exp(-eta_t * r_jk.unsqueeze(1) ** 2) * cosine_cutoff(r_jk, rc).unsqueeze(1)
        )
        cos_t = (v_ij * v_ik).sum(1) / (d_close.index_select(0, pa) * d_close.index_select(0, pb))
        angular_part = torch.stack(
            [2.0 ** (1.0 - zeta) * _int_power(1.0 + lam * cos_t, zeta) for zeta, lam in zeta_lams], dim=1
        )
        g4_terms = (radial_part.unsqueeze(2) * angular_part.unsqueeze(1)).reshape(len(pa), -1)
        order = [etas.index(e) * len(zeta_lams) + zeta_lams.index((z, lam)) for e, z, lam in spec.angular]
        if order != list(range(g4_terms.shape[1])):
            g4_terms = g4_terms[:, order]
        pa, pb = close[pa], close[pb]
        slot = i[pa] * spec.n_pairs + element_pair_index(n_el, device)[species[j[pa]], species[j[pb]]]
        g4 = g4.index_add(0, slot, g4_terms)
    return torch.cat([g2, g4.reshape(n_atoms, spec.n_pairs * n_ang)], dim=1)


def _cutoff_and_slope(r: torch.Tensor, rc: float) -> tuple[torch.Tensor, torch.Tensor]:
    """fc(r) (as ``cosine_cutoff``) and dfc/dr, both zero from rc on."""
    x = (math.pi / rc) * r.clamp(max=rc)
    return 0.5 * (torch.cos(x) + 1.0), (-0.5 * math.pi / rc) * torch.sin(x) * (r < rc)


def symmetry_functions_with_jacobian(
    spec: DescriptorSpec,
    species: torch.Tensor,
    vectors: torch.Tensor,
    i: torch.Tensor,
    j: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """G (n_atoms, n_features), as ``symmetry_functions``, and dG_i/dD_p (P, n_features, 3).

    Pair p enters only the features of its centre i, so (P, F, 3) holds the whole Jacobian. It is
    written out analytically, one vectorised pass over pairs and triplets, because autograd
    needs one backward pass per feature column for it (the trainer's featurisation was 40 of
    them). ``tests/test_training.py`` checks it against autograd to rounding.
    """
    n_atoms, n_el = species.shape[0], spec.n_elements
    n_pairs_all, n_feat = vectors.shape[0], spec.n_features
    dtype, device = vectors.dtype, vectors.device
    vectors = vectors.detach()
    dist = torch.linalg.norm(vectors, dim=1)
    unit = vectors / dist.unsqueeze(1)
    jac = torch.zeros(n_pairs_all, n_feat, 3, dtype=dtype, device=device)

    # radial: g(r) = exp(-eta (r - rs)^2) fc(r); dG/dD_p = g'(r) D_p / r in the columns of Z_j
    eta_r, rs = torch.tensor(spec.radial, dtype=dtype, device=device).T
    n_rad = len(spec.radial)
    fc, dfc = _cutoff_and_slope(dist, spec.cutoff)
    shifted = dist.unsqueeze(1) - rs
    gauss = torch.exp(-eta_r * shifted**2)
    g2_terms = gauss * fc.unsqueeze(1)
    g2_slope = gauss * (-2.0 * eta_r * shifted * fc.unsqueeze(1) + dfc.unsqueeze(1))
    g2 = torch.zeros(n_atoms * n_el, n_rad, dtype=dtype, device=device)
    g2 = g2.index_add(0, i * n_el + species[j], g2_terms).reshape(n_atoms, n_el * n_rad)
    radial_jac = torch.zeros(n_pairs_all, n_el, n_rad, 3, dtype=dtype, device=device)
    radial_jac[torch.arange(n_pairs_all, device=device), species[j]] = g2_slope.unsqueeze(2) * unit.unsqueeze(1)
    jac[:, : n_el * n_rad] = radial_jac.reshape(n_pairs_all, n_el * n_rad, 3)

    n_ang = len(spec.angular)
    g4 = torch.zeros(n_atoms * spec.n_pairs, n_ang, dtype=dtype, device=device)
    close = (dist < spec.angular_cutoff).nonzero(as_tuple=True)[0]
    pa, pb = triplets(i[close], n_atoms)
    if pa.numel():
        rc = spec.angular_cutoff
        etas = sorted({a[0] for a in spec.angular})
        zeta_lams = sorted({(a[1], a[2]) for a in spec.angular})
        eta_t = torch.tensor(etas, dtype=dtype, device=device)
        d_c, u_c = dist[close], unit[close]
        fc_c, dfc_c = _cutoff_and_slope(d_c, rc)
        # per pair and eta: P(r) = exp(-eta r^2) fc(r) and dP/dr
        gauss_c = torch.exp(-eta_t * d_c.unsqueeze(1) ** 2)
        pf = gauss_c * fc_c.unsqueeze(1)
        pf_slope = gauss_c * (-2.0 * eta_t * d_c.unsqueeze(1) * fc_c.unsqueeze(1) + dfc_c.unsqueeze(1))
        a_vec, b_vec = vectors[close][pa], vectors[close][pb]
        ra, rb, ua, ub = d_c[pa], d_c[pb], u_c[pa], u_c[pb]
        c_vec = b_vec - a_vec
        r_jk = torch.linalg.norm(c_vec, dim=1)
        uc = c_vec / r_jk.unsqueeze(1)
        fc_jk, dfc_jk = _cutoff_and_slope(r_jk, rc)
        gauss_jk = torch.exp(-eta_t * r_jk.unsqueeze(1) ** 2)
        q = gauss_jk * fc_jk.unsqueeze(1)
        q_slope = gauss_jk * (-2.0 * eta_t * r_jk.unsqueeze(1) * fc_jk.unsqueeze(1) + dfc_jk.unsqueeze(1))
        pa_f, pb_f, pa_s, pb_s = pf[pa], pf[pb], pf_slope[pa], pf_slope[pb]
        radial_part = pa_f * pb_f * q  # (T, E)
        # d r_jk / d a = -u_c, d r_jk / d b = +u_c (c = b - a)
        along_jk = (pa_f * pb_f * q_slope).unsqueeze(2) * uc.unsqueeze(1)
        d_rad_a = (pa_s * pb_f * q).unsqueeze(2) * ua.unsqueeze(1) - along_jk
        d_rad_b = (pa_f * pb_s * q).unsqueeze(2) * ub.unsqueeze(1) + along_jk
        cos_t = (a_vec * b_vec).sum(1) / (ra * rb)
        d_cos_a = (ub - cos_t.unsqueeze(1) * ua) / ra.unsqueeze(1)
        d_cos_b = (ua - cos_t.unsqueeze(1) * ub) / rb.unsqueeze(1)
        base = [1.0 + lam * cos_t for _, lam in zeta_lams]
        ang = torch.stack([2.0 ** (1.0 - z) * _int_power(x, z) for (z, _), x in zip(zeta_lams, base, strict=True)], 1)
        ang_slope = torch.stack([
            2.0 ** (1.0 - z) * z * lam * (_int_power(x, z - 1) if z > 1 else torch.ones_like(x))
            for (z, lam), x in zip(zeta_lams, base, strict=True)], 1)  # (T, Z)
        n_t = len(pa)
        g4_terms = (radial_part.unsqueeze(2) * ang.unsqueeze(1)).reshape(n_t, -1)
        d_a = (d_rad_a.unsqueeze(2) * ang.unsqueeze(1).unsqueeze(3)
               + (radial_part.unsqueeze(2) * ang_slope.unsqueeze(1)).unsqueeze(3) * d_cos_a.unsqueeze(1).unsqueeze(1))
        d_b = (d_rad_b.unsqueeze(2) * ang.unsqueeze(1).unsqueeze(3)
               + (radial_part.unsqueeze(2) * ang_slope.unsqueeze(1)).unsqueeze(3) * d_cos_b.unsqueeze(1).unsqueeze(1))
        d_a, d_b = d_a.reshape(n_t, -1, 3), d_b.reshape(n_t, -1, 3)
        order = [etas.index(e) * len(zeta_lams) + zeta_lams.index((z, lam)) for e, z, lam in spec.angular]
        if order != list(range(g4_terms.shape[1])):
            g4_terms, d_a, d_b = g4_terms[:, order], d_a[:, order], d_b[:, order]
        pa, pb = close[pa], close[pb]
        slot_of = element_pair_index(n_el, device)[species[j[pa]], species[j[pb]]]
        g4 = g4.index_add(0, i[pa] * spec.n_pairs + slot_of, g4_terms)
        ang_jac = torch.zeros(n_pairs_all * spec.n_pairs, n_ang, 3, dtype=dtype, device=device)
        ang_jac = ang_jac.index_add(0, torch.cat([pa * spec.n_pairs + slot_of, pb * spec.n_pairs + slot_of]),
                                    torch.cat([d_a, d_b]))
        jac[:, n_el * n_rad :] = ang_jac.reshape(n_pairs_all, spec.n_pairs * n_ang, 3)
    return torch.cat([g2, g4.reshape(n_atoms, spec.n_pairs * n_ang)], dim=1), jac
