"""``slhmc analyze DIR --compare OTHER [OTHER ...]``: is this the same ensemble as that one?

Overlays, for DIR and every OTHER, the radial distribution g(r) per element pair and the
distribution of the potential energy per atom, each with an error band, and prints for every
OTHER the largest difference from DIR of each observable in units of its combined error
σ = sqrt(σ_DIR² + σ_OTHER²). The paper's check of SLHMC: its g(r) over that of AIMD.

What is read from each source:

- a run directory: the chain states (chain.extxyz) and their reference energies (``e_chain`` of
  trials.jsonl), after the same burn-in ``slhmc analyze`` discards (the first 1/10; of an NPT run
  at least the trials before ``[hmc] volume_adapt_until``);
- an ``slhmc md`` directory: every repeat's frames and the network's E_pot (energies.csv);
- any other path: a trajectory file ase.io reads (an AIMD run: VASP's OUTCAR or vasprun.xml, an
  ASE .traj, extxyz, ...); g(r) from its positions, E_pot from the energies stored with the frames
  (none: no E_pot comparison for it). ``FILE@200:`` (ase.io's index syntax) skips the first 200
  frames, e.g. an equilibration; without it every frame is used.

Error bars: each observable is a mean over frames of a per-frame value (one frame's g(r) in a bin;
1/width if its E_pot falls into a histogram bin, else 0). Successive frames are correlated, so the
standard error of every bin comes from its own integrated autocorrelation time, the larger of
Sokal's estimate and block averages (:func:`slhmc.statistics.mean_and_error`). Bins that are zero
in both sources (g(r) inside the core) are not compared. The largest of K bins' |Δ|/σ is about
2–3 even for one and the same ensemble (K independent normal deviates), so that is printed with it.

Writes compare_rdf.png, compare_epot.png and compare.json (every curve with its error) into DIR.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms

from slhmc.rundir import (
    CHAIN,
    TRAJECTORY,
    TRIALS,
    is_md_dir,
    read_frames,
    read_md_energies,
    read_trials,
    repeat_dirs,
)
from slhmc.statistics import estimate, mean_and_error

from . import plots as plotting
from .chain import BURN_IN_DIVISOR, discarded_trials
from .npt import equilibrated_frames, npt_settings
from .structure import rdf_per_frame

MAX_FRAMES = 1000  # g(r) of at most about this many frames per source (evenly spaced): plenty, and fast
R_MAX_A = 6.0
RDF_BINS = 120
EPOT_BINS = 40
COMPARE_JSON = "compare.json"


class CompareError(ValueError):
    """A source that cannot be compared: missing, or neither a run, an md directory nor a trajectory."""


@dataclass
class Source:
    """One ensemble to compare: frames for g(r), E_pot per atom (eV) for its distribution."""

    label: str
    kind: str  # "run", "md" or "file"
    frames: list[Atoms]
    e_pot: np.ndarray | None  # eV/atom, in sampling order; None where the source has no energies
    description: str  # what was read, for the printout
    n_atoms: int = field(init=False)

    def __post_init__(self) -> None:
        self.n_atoms = len(self.frames[0]) if self.frames else 0


def _thin(frames: list[Atoms]) -> list[Atoms]:
    return frames[:: max(1, -(-len(frames) // MAX_FRAMES))]


def _file_energies(frames: list[Atoms]) -> np.ndarray | None:
    """E_pot per atom (eV) stored with every frame (a calculator's results), or None."""
    energies = []
    for atoms in frames:
        results = atoms.calc.results if atoms.calc is not None else {}
        energy = results.get("energy", results.get("free_energy"))
        if energy is None:
            return None
        energies.append(float(energy) / len(atoms))
    return np.array(energies)


def load_source(spec: str) -> Source:
    """A run directory, an ``slhmc md`` directory or a trajectory file (``FILE@INDEX`` allowed)."""
    path = Path(spec)
    if path.is_dir():
        if is_md_dir(path):
            frames = [a for rep in repeat_dirs(path) for a in read_frames(rep / TRAJECTORY)]
            rows = read_md_energies(path)
            if not frames:
                raise CompareError(f"{spec}: the md directory has no frames yet")
            e_pot = np.array([float(r["e_pot_eV"]) for r in rows]) / len(frames[0]) if rows else None
            return Source(spec, "md", frames, e_pot, f"slhmc md, {len(repeat_dirs(path))} repeat(s), {len(frames)} "
                          f"frames; E_pot: the network's")
        if (path / TRIALS).exists():
            trials = read_trials(path)
            chain = read_frames(path / CHAIN)
            if len(trials) < 2 or len(chain) < 2:
                raise CompareError(f"{spec}: the run has fewer than 2 finished trials")
            npt = npt_settings(path, trials)
            if npt is None:
                burn, burn_frames = len(trials) // BURN_IN_DIVISOR, len(chain) // BURN_IN_DIVISOR
            else:
                burn = discarded_trials(trials, npt)
                burn_frames = len(chain) - len(equilibrated_frames(chain, trials, burn))
            if burn >= len(trials) - 1 or burn_frames >= len(chain) - 1:
                raise CompareError(f"{spec}: all {len(trials)} trials so far are equilibration")
            e_pot = np.array([t["e_chain"] / t["n_atoms"] for t in trials[burn:]])
            return Source(spec, "run", chain[burn_frames:], e_pot,
                          f"SLHMC run, {len(chain) - burn_frames} chain states after a burn-in of {burn_frames}; "
                          f"E_pot: the reference's, {len(e_pot)} trials after a burn-in of {burn}")
        raise CompareError(f"{spec} is a directory but neither a run (no {TRIALS}) nor an slhmc md directory")
    from ase.io import read
    from ase.io.formats import parse_filename

    name, index = parse_filename(spec, ":")
    if not Path(name).exists():
        raise CompareError(f"no such file or directory: {name}")
    try:
        frames = read(name, index=index)
    except Exception as err:  # ase.io raises many kinds for a file it cannot parse
        raise CompareError(f"{spec}: ase.io cannot read it as a trajectory: {err}") from None
    frames = [frames] if isinstance(frames, Atoms) else list(frames)
    if not frames:
        raise CompareError(f"{spec}: no frames")
    e_pot = _file_energies(frames)
    return Source(spec, "file", frames, e_pot, f"trajectory file, {len(frames)} frames; E_pot: "
                  + ("the file's" if e_pot is not None else "none stored (g(r) only)"))


def rdf_with_errors(source: Source) -> tuple[str, np.ndarray, dict[str, dict[str, np.ndarray]]]:
    """(kind, r in Å, {pair: {"g", "error"}}) of ``source``'s frames (at most ~``MAX_FRAMES``)."""
    kind, r, per_frame = rdf_per_frame(_thin(source.frames), R_MAX_A, RDF_BINS)
    curves = {}
    for pair, g in per_frame.items():
        mean, error = mean_and_error(g)
        curves[pair] = {"g": mean, "error": error}
    return kind, r, curves


def epot_histogram(e_pot: np.ndarray, edges: np.ndarray) -> dict[str, np.ndarray | float]:
    """Density of E_pot per atom on ``edges`` (1/(eV/atom)) with its error per bin, and the mean with its error."""
    width = np.diff(edges)
    inside = (e_pot[:, None] >= edges[None, :-1]) & (e_pot[:, None] < edges[None, 1:])
    inside[:, -1] |= e_pot == edges[-1]
    density, error = mean_and_error(inside / width[None, :])
    e = estimate(e_pot)
    return {"density": density, "error": error, "mean": e.mean, "mean_error": e.error}


def largest_difference(a: np.ndarray, a_err: np.ndarray, b: np.ndarray, b_err: np.ndarray) -> tuple[float, int, int]:
    """Largest |a − b| / sqrt(a_err² + b_err²) over the bins where a or b is non-zero, its bin, and
    the number of bins compared; a difference with zero error counts as infinitely many σ."""
    sigma = np.hypot(a_err, b_err)
    diff = np.abs(a - b)
    compared = (a != 0) | (b != 0)
    if not compared.any():
        return 0.0, -1, 0
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(sigma > 0, diff / np.where(sigma > 0, sigma, 1.0), np.where(diff > 0, np.inf, 0.0))
    z = np.where(compared, z, -1.0)
    k = int(np.argmax(z))
    return float(z[k]), k, int(compared.sum())


def typical_largest_sigma(bins: int) -> float:
    """Median of the largest |z| of ``bins`` independent standard normal deviates: what the largest
    difference between two samples of one and the same ensemble typically is."""
    from scipy.stats import norm

    return float(norm.isf((1.0 - 0.5 ** (1.0 / max(bins, 1))) / 2.0))


def _rdf_differences(ref: Source, other: Source, r: np.ndarray, ref_rdf: tuple, other_rdf: tuple,
                     lines: list[str]) -> list[dict]:
    """Append to ``lines`` the largest g(r) difference per element pair; returns the records."""
    (ref_kind, _, ref_curves), (kind, _, curves) = ref_rdf, other_rdf
    if kind != ref_kind:
        lines.append(f"  g(r): not compared ({kind} against {ref_kind}: one is periodic, the other not)")
        return []
    records = []
    for pair, a in ref_curves.items():
        if pair not in curves:
            lines.append(f"  g(r) {pair}: no such pair in {other.label}")
            continue
        b = curves[pair]
        z, k, n = largest_difference(a["g"], a["error"], b["g"], b["error"])
        if k < 0:
            continue
        lines.append(f"  g(r) {pair}: {z:.1f} σ at r = {r[k]:.2f} Å ({b['g'][k]:.3f} ± {b['error'][k]:.3f} against "
                     f"{a['g'][k]:.3f} ± {a['error'][k]:.3f}; {n} bins compared, the largest of {n} independent "
                     f"deviations is typically {typical_largest_sigma(n):.1f} σ)")
        records.append({"source": other.label, "observable": f"g(r) {pair}", "sigma": z, "at": float(r[k]),
                        "unit": "Å", "bins": n})
    return records


def _epot_differences(ref: Source, other: Source, edges: np.ndarray, hists: dict, lines: list[str]) -> list[dict]:
    """Append to ``lines`` the largest difference of the E_pot densities and of ⟨E_pot⟩; returns the records."""
    missing = [s.label for s in (other, ref) if s.label not in hists]
    if missing:
        lines.append(f"  E_pot: not compared (no energies in {missing[0]})")
        return []
    a, b = hists[ref.label], hists[other.label]
    centres = 0.5 * (edges[1:] + edges[:-1])
    z, k, n = largest_difference(a["density"], a["error"], b["density"], b["error"])
    lines.append(f"  E_pot distribution: {z:.1f} σ at E_pot = {centres[k]:.5f} eV/atom ({b['density'][k]:.1f} ± "
                 f"{b['error'][k]:.1f} against {a['density'][k]:.1f} ± {a['error'][k]:.1f} per eV/atom; {n} bins "
                 f"compared, typically {typical_largest_sigma(n):.1f} σ)")
    delta, sigma = b["mean"] - a["mean"], float(np.hypot(a["mean_error"], b["mean_error"]))
    z_mean = abs(delta) / sigma if sigma > 0 else (np.inf if delta else 0.0)
    lines.append(f"  <E_pot>: {b['mean']:.5f} ± {b['mean_error']:.5f} against {a['mean']:.5f} ± "
                 f"{a['mean_error']:.5f} eV/atom, difference {delta:+.5f} eV/atom = {z_mean:.1f} σ")
    if other.n_atoms != ref.n_atoms:
        lines.append(f"  (cells of {other.n_atoms} and {ref.n_atoms} atoms: the per-atom E_pot distributions differ "
                     "in width even for one ensemble, as 1/sqrt(atoms))")
    return [{"source": other.label, "observable": "E_pot distribution", "sigma": z, "at": float(centres[k]),
             "unit": "eV/atom", "bins": n},
            {"source": other.label, "observable": "<E_pot>", "sigma": float(z_mean), "difference": float(delta),
             "unit": "eV/atom"}]


def compare(run_dir: str | Path, others: list[str | Source], plots: bool = True) -> dict:
    """Compare ``run_dir`` (a run or md directory) with every source of ``others`` (paths as
    :func:`load_source` takes them, or sources it loaded). Writes compare.json and (``plots``)
    compare_rdf.png and compare_epot.png into ``run_dir``; returns what compare.json holds, with
    ``report``: the lines ``slhmc analyze`` prints (what was read; per source, the largest difference
    of each observable). Raises :class:`CompareError` for a source that cannot be read."""
    run_dir = Path(run_dir)
    sources = [load_source(str(run_dir))] + [o if isinstance(o, Source) else load_source(o) for o in others]
    seen: set[str] = set()
    for k, s in enumerate(sources):  # one name per curve, even for DIR against itself
        while s.label in seen:
            s.label = f"{s.label} (#{k + 1})"
        seen.add(s.label)
    lines = [f"compare: {s.label}: {s.description}" for s in sources]
    rdfs = [rdf_with_errors(s) for s in sources]
    ref_kind, r, _ = rdfs[0]
    with_energy = [s for s in sources if s.e_pot is not None and len(s.e_pot)]
    edges, hists = None, {}
    if with_energy:
        pooled = np.concatenate([s.e_pot for s in with_energy])
        lo, hi = float(pooled.min()), float(pooled.max())
        pad = 0.02 * (hi - lo) if hi > lo else 1e-3
        edges = np.linspace(lo - pad, hi + pad, EPOT_BINS + 1)
        hists = {s.label: epot_histogram(s.e_pot, edges) for s in with_energy}

    differences = []
    for s, s_rdf in zip(sources[1:], rdfs[1:], strict=True):
        lines.append(f"{s.label} against {sources[0].label}: the largest difference in units of the combined error "
                     "σ (values: the former's against the latter's)")
        differences += _rdf_differences(sources[0], s, r, rdfs[0], s_rdf, lines)
        if edges is not None:
            differences += _epot_differences(sources[0], s, edges, hists, lines)

    written = []
    if plots:
        written = plotting.plot_compare(run_dir, r, ref_kind, {s.label: rdf[2] for s, rdf in zip(sources, rdfs,
                                        strict=True) if rdf[0] == ref_kind}, edges, hists)
        lines.append("plots: " + ", ".join(str(run_dir / p) for p in written))
    result = {
        "sources": [{"label": s.label, "kind": s.kind, "description": s.description, "frames": len(s.frames),
                     "atoms": s.n_atoms, "rdf_kind": rdf[0]} for s, rdf in zip(sources, rdfs, strict=True)],
        "r_A": r.tolist(),
        "rdf": {s.label: {pair: {k: v.tolist() for k, v in c.items()} for pair, c in rdf[2].items()}
                for s, rdf in zip(sources, rdfs, strict=True)},
        "e_pot_edges_eV_per_atom": None if edges is None else edges.tolist(),
        "e_pot": {label: {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in h.items()}
                  for label, h in hists.items()},
        "differences": differences,
        "plots": written,
    }
    (run_dir / COMPARE_JSON).write_text(json.dumps(result))
    result["report"] = lines
    return result
