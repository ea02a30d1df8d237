"""The files of a run directory and of an ``slhmc md`` output directory, and their readers.

Every module that writes or reads these directories takes the names from here: the server's
writer (slhmc.server.outputs), the calculator loader (slhmc.potential), ``slhmc md`` and
``slhmc analyze``. This module imports neither the server nor the potential, so either can use it.

A run directory (``slhmc run`` / ``slhmc server --out DIR``)::

    trials.jsonl             one JSON record per finished trial (appended)
    chain.extxyz             the chain state after every trial (appended)
    dataset.extxyz           every reference label, energies in eV, forces in eV/Å (appended)
    models/model_NNNN.safetensors, models/metrics.jsonl   model versions and their fit metrics
    checkpoint.json          the state to resume from, with the byte length of each appended file
    config.json              the config the run was started with (never rewritten)
    config.toml              the config file itself, for a run started from Python (slhmc.run)
    .slhmc.lock              held by the running server
    server.log, logs/        the server's and the workers' logs

An ``slhmc md`` directory::

    md.json                  what was run, and the extrapolation record of each repeat
    repeat_K/energies.csv    energies (eV) and temperature (K) every ``stride`` steps
    repeat_K/trajectory.extxyz            positions and momenta every ``stride`` steps
    repeat_K/extrapolation.extxyz         the first structure where the network extrapolates

``slhmc analyze DIR`` adds ``summary.json``, ``rdf.json`` and PNG plots to either (and
``dos.txt`` to an MD directory).

The appended files may be read while a run writes them: the readers keep what is complete and
drop a record or frame cut short by the writer.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from ase import Atoms
from ase.io import iread

# run directory
TRIALS = "trials.jsonl"
CHAIN = "chain.extxyz"
DATASET = "dataset.extxyz"
MODELS = "models"
METRICS = f"{MODELS}/metrics.jsonl"
MODEL_GLOB = "model_*.safetensors"
CHECKPOINT = "checkpoint.json"
CONFIG_RECORD = "config.json"
CONFIG_COPY = "config.toml"  # the config file, copied into the run directory by slhmc.run (Python)
LOCK = ".slhmc.lock"
SERVER_LOG = "server.log"
WORKER_LOGS = "logs"
# what happened to the workers, one JSON object a line: joined, lost (with the task re-queued),
# task_failed (reason: failed, timeout, lost), done (counts of dropped messages and refused handshakes)
EVENTS = "events.jsonl"

# slhmc md directory
MD_META = "md.json"
REPEAT_GLOB = "repeat_*"
ENERGIES = "energies.csv"
TRAJECTORY = "trajectory.extxyz"
EXTRAPOLATION = "extrapolation.extxyz"

# written by slhmc analyze into either kind
SUMMARY = "summary.json"
RDF = "rdf.json"
DOS = "dos.txt"


def model_file_name(version: int) -> str:
    """``models/``-relative name of model ``version``: zero-padded, so names sort by version."""
    return f"model_{version:04d}.safetensors"


def newest_model_file(run_dir: str | Path) -> Path:
    """The newest ``models/model_*.safetensors`` of a run directory (FileNotFoundError if none)."""
    files = sorted(Path(run_dir, MODELS).glob(MODEL_GLOB))
    if not files:
        raise FileNotFoundError(f"no {MODELS}/{MODEL_GLOB} in {run_dir}")
    return files[-1]


def _read_jsonl(path: Path) -> list[dict]:
    records: list[dict] = []
    if not path.exists():
        return records
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # the line being written right now
            break
    return records


def read_trials(run_dir: str | Path) -> list[dict]:
    """The finished trials of a run, in order (a half-written last line is ignored)."""
    return _read_jsonl(Path(run_dir) / TRIALS)


def read_events(run_dir: str | Path) -> list[dict]:
    """The server's worker events (see :data:`EVENTS`), in order, across resumes."""
    return _read_jsonl(Path(run_dir) / EVENTS)


def read_metrics(run_dir: str | Path) -> list[dict]:
    """One record per model version saved (``version`` and the fit's metrics), in order."""
    return _read_jsonl(Path(run_dir) / METRICS)


def read_frames(path: str | Path, limit: int | None = None) -> list[Atoms]:
    """Complete frames of an extxyz file that may be being appended to; at most ``limit``."""
    path = Path(path)
    frames: list[Atoms] = []
    if not path.exists():
        return frames
    try:
        for atoms in iread(path, index=":"):
            frames.append(atoms)
            if limit is not None and len(frames) >= limit:
                break
    except Exception:  # a frame cut short by a running writer: keep what came before
        pass
    return frames


def read_config_record(run_dir: str | Path) -> dict | None:
    """The run's config.json, or None for a run started before runs recorded their config."""
    path = Path(run_dir) / CONFIG_RECORD
    return json.loads(path.read_text()) if path.exists() else None


def read_run_config(run_dir: str | Path) -> dict | None:
    """The run's config as a dict of sections: config.json's validated config (every default filled
    in), else the config.toml in the run directory as written (defaults absent), else None."""
    record = read_config_record(run_dir)
    if record is not None:
        return record["config"]
    path = Path(run_dir) / CONFIG_COPY
    if not path.exists():
        return None
    import tomllib

    return tomllib.loads(path.read_text())


def is_md_dir(path: str | Path) -> bool:
    """Whether ``path`` holds an ``slhmc md`` run (its md.json) rather than an HMC run."""
    return (Path(path) / MD_META).exists()


def repeat_dir(md_dir: str | Path, repeat: int) -> Path:
    return Path(md_dir) / f"repeat_{repeat}"


def repeat_dirs(md_dir: str | Path) -> list[Path]:
    """The repeat folders of an MD directory, sorted by name."""
    return sorted(Path(md_dir).glob(REPEAT_GLOB))


def read_md_meta(md_dir: str | Path) -> dict:
    """md.json: the run's parameters and its ``extrapolation`` record."""
    return json.loads((Path(md_dir) / MD_META).read_text())


def read_md_energies(md_dir: str | Path) -> list[dict[str, str]]:
    """The energies.csv rows of every repeat, repeat after repeat (values as the strings written)."""
    rows: list[dict[str, str]] = []
    for rep in repeat_dirs(md_dir):
        with open(rep / ENERGIES) as f:
            rows += list(csv.DictReader(f))
    return rows


def stopped_repeats(meta: dict) -> list[dict]:
    """The ``md.json`` records of repeats that on_extrapolation="stop" ended early."""
    return [rec for rec in meta.get("extrapolation", {}).get("repeats", []) if rec.get("stopped")]


def flagged_repeats(meta: dict) -> list[dict]:
    """The ``md.json`` records of repeats with at least one extrapolating step."""
    return [rec for rec in meta.get("extrapolation", {}).get("repeats", []) if rec.get("first_step") is not None]
