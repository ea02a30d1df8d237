"""Fast energy + forces for MD: compiled symmetry functions with hand-written derivatives.

The plain path (:meth:`BPNN.evaluate`) builds the descriptor from ~100 vectorised torch ops over
pairs and triplets and differentiates it with autograd; on one CPU thread ~95 % of its time goes
to the angular (triplet) terms, forward and backward (Cu64 at 6.0/4.5 Å: 49k pairs of pairs, 21k
of them within the angular cutoff). Here the same symmetry functions are numba loops
(``_kernels``) over centres, their pairs and their triplets:

1. ``_features``: G (N, F), the sum ``symmetry_functions`` computes (equal to 1e-12 relative), and
   a tape of the per-pair and per-triplet factors the gradient needs;
2. the MLPs in torch, and dE/dG by autograd through them only (small: N x F);
3. ``_forces``: the chain rule dE/dD_p = sum_f dE/dG_if dG_if/dD_p written out per pair and per
   triplet from the tape, contracted on the fly (no Jacobian is stored), then F_i += dE/dD_p,
   F_j -= dE/dD_p and the virial sum_p D_p (x) dE/dD_p for the stress.

So the forces are the analytic gradient of the same energy function as the plain path
(``tests/test_fast_forces.py`` compares them with autograd to 1e-9 relative along MD runs) — the
property the ML-MD proposal needs to stay time-reversible and volume-preserving.

Pairs come from a Verlet list with a skin (:class:`slhmc.potential.neighbors.VerletList`): pairs
within cutoff + skin, rebuilt when an atom has moved more than skin/2 since the last build. Pairs
and triplets beyond the cutoffs are skipped; they would contribute exactly 0 (the cosine cutoff
and its slope vanish there), so the energy is the same function of the positions whichever list
is in use. Triplets are not cached with the list: with a skin their number would grow as
((rc + skin)/rc)^6 (1.9x for 0.5 Å); they are formed from the cached pairs at every step.

numba compiles the kernels on first use (~7 s, once: cached on disk next to the source, 0.5 s
to load after that). Where numba is missing or the model lives on a GPU, :class:`FastPotential`
falls back to the torch descriptor with autograd (still with the Verlet list).
"""

from __future__ import annotations

import importlib.util
import logging

import numpy as np
import torch

from .neighbors import VerletList
from .network import BPNN, Evaluation

log = logging.getLogger(__name__)

HAVE_NUMBA = importlib.util.find_spec("numba") is not None


# Default Verlet skin (Å). At 300-1000 K an atom moves ~0.01 Å per 2-fs step, so a 0.5-Å skin is
# rebuilt every few tens of steps, while the extra pairs (6.5³/6³ = 1.27x) are only a distance test.
DEFAULT_SKIN = 0.5


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
        if not self.compiled:
            log.debug("FastPotential on %s: torch descriptor and autograd with a Verlet list", model.device)
        if self.compiled:
            from . import _kernels  # imports numba; compiles on first call (cached on disk after that)

            self._k = _kernels
        spec = model.spec
        etas = sorted({a[0] for a in spec.angular})
        zeta_lams = sorted({(a[1], a[2]) for a in spec.angular})
        # G4 column f is the product of the radial part of eta col_eta[f] and the angular part of
        # (zeta, lambda) col_zl[f], each computed once per triplet (as in symmetry_functions)
        col_eta = np.array([etas.index(eta) for eta, _, _ in spec.angular], dtype=np.int64)
        col_zl = np.array([zeta_lams.index((zeta, lam)) for _, zeta, lam in spec.angular], dtype=np.int64)
        n_el = spec.n_elements
        pair_slot = np.zeros((n_el, n_el), dtype=np.int64)
        rows, cols = np.triu_indices(n_el)
        pair_slot[rows, cols] = pair_slot[cols, rows] = np.arange(len(rows))
        self._params = (
            float(spec.cutoff), float(spec.angular_cutoff),
            np.array([r[0] for r in spec.radial], dtype=np.float64), np.array([r[1] for r in spec.radial]),
            np.array(etas, dtype=np.float64), np.array([z for z, _ in zeta_lams], dtype=np.float64),
            np.array([int(z) if z == int(z) and 1 <= z <= 64 else 0 for z, _ in zeta_lams], dtype=np.int64),
            np.array([lam for _, lam in zeta_lams], dtype=np.float64), col_eta, col_zl, pair_slot,
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
        """G and the tape of the kernels (see ``_kernels._features``), reused while large enough (grown
        by 25 % when not): fresh large arrays would cost a page fault per 4 kB on every step."""
        spec = self.model.spec
        n_eta = self._params[4].shape[0]
        need = (n_atoms, len(dist), int(self._k._triplet_bound(dist, self.neighbors.first, spec.angular_cutoff)))
        have = self._sizes
        if have is None or have[0] != need[0] or have[1] < need[1] or have[2] < need[2]:
            n_pair = int(need[1] * 1.25) if have is None or have[1] < need[1] else have[1]
            n_trip = int(need[2] * 1.25) if have is None or have[2] < need[2] else have[2]
            self._g = np.empty((n_atoms, spec.n_features))
            self._tape = (np.empty((n_pair, len(spec.radial))), np.empty((n_pair, n_eta)), np.empty((n_pair, n_eta)),
                          np.empty(n_pair), np.empty(n_trip, np.int64), np.empty(n_trip, np.int64),
                          np.empty((n_eta, n_trip)), np.empty((n_eta, n_trip)),
                          np.empty(n_atoms * spec.n_pairs + 1, np.int64))
            self._sizes = (n_atoms, n_pair, n_trip)
        return self._g, self._tape

    def features(self, numbers: np.ndarray, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
        """The symmetry functions G (N, F), float64, as ``model.features`` gives them (a copy)."""
        if not self.compiled:
            raise RuntimeError("features() needs the compiled kernels; use model.features")
        return self._descriptor(numbers, positions, cell, pbc)[2].copy()

    def _descriptor(self, numbers: np.ndarray, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> tuple:
        # writable C float64: what the kernels were compiled for (read-only arrays, e.g. decoded
        # from a message, would make numba compile them once more)
        positions = np.require(positions, dtype=np.float64, requirements=["C", "W"])
        cell = np.require(cell, dtype=np.float64, requirements=["C", "W"])
        species, species_np = self._species_of(numbers)
        nl = self.neighbors
        nl.update(positions, cell, pbc)
        vec, dist = self._k._pair_vectors(positions, cell, nl.i, nl.j, nl.shifts)
        g, tape = self._workspace(len(positions), dist)
        self._k._features(vec, dist, nl.j, nl.first, species_np, g, tape, *self._params)
        return species, species_np, g, (vec, dist, tape)

    def evaluate(
        self, numbers: np.ndarray, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, stress: bool = False
    ) -> Evaluation:
        """As :meth:`BPNN.evaluate`: energy (eV), forces (eV/Å), stress (eV/Å³) if asked for, and
        the extrapolation counts."""
        pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
        model, nl = self.model, self.neighbors
        if not self.compiled:
            positions, cell = np.asarray(positions, dtype=np.float64), np.asarray(cell, dtype=np.float64)
            nl.update(positions, cell, pbc)
            pairs = tuple(torch.from_numpy(a).to(model.device) for a in (nl.i, nl.j, nl.shifts))
            return model.evaluate(numbers, positions, cell, pbc, stress=stress, pairs=pairs)
        species, species_np, g, (vec, dist, tape) = self._descriptor(numbers, positions, cell, pbc)
        # the MLPs in the model's dtype; G and dE/dG cross over as float64
        feats = torch.from_numpy(g).to(model.dtype).requires_grad_(True)
        energy = model.atomic_energies(feats, species).sum()
        (dedg,) = torch.autograd.grad(energy, feats)
        dedg_np = np.ascontiguousarray(dedg.numpy(), dtype=np.float64)
        forces, virial = self._k._forces(vec, dist, nl.j, nl.first, species_np, dedg_np, tape, *self._params)
        sigma = None
        if stress:
            volume = abs(float(np.linalg.det(np.asarray(cell, dtype=np.float64))))
            if volume <= 0:
                raise ValueError("stress needs a cell with non-zero volume")
            sigma = 0.5 * (virial + virial.T) / volume
        counts = model.count_extrapolating(feats.detach(), species)
        per_element = None if counts is None else tuple(counts.tolist())
        return Evaluation(float(energy.detach()), forces, sigma,
                          None if per_element is None else sum(per_element), per_element)
