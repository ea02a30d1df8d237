"""Writing a run directory: trial log, chain and dataset trajectories, model versions, checkpoint.

The file names, and the readers that ``slhmc analyze`` and the calculator loader use, are in
:mod:`slhmc.rundir`.

The checkpoint records the byte length of each append-only file at the moment it was written;
``--resume`` truncates the files back to those lengths, so the log, the dataset and the chain
never disagree with the checkpoint after a crash. The checkpoint itself is replaced atomically
(write, fsync, rename).

``config.json`` records the config a run was started with (as validated, with digests of the
files it names) and is never rewritten. ``--resume`` compares the config it is given with it and
refuses a change of what the chain means (:data:`FIXED_KEYS`), naming each key with its old and
new value, before any process starts; other keys (``hmc.trials``, ``training.interval``,
``workers.*``, ...) may change.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write

from slhmc import __version__
from slhmc.config import Config
from slhmc.rundir import (
    CHAIN,
    CHECKPOINT,
    CONFIG_RECORD,
    DATASET,
    EVENTS,
    LOCK,
    METRICS,
    MODELS,
    TRIALS,
    model_file_name,
    read_config_record,
)

log = logging.getLogger(__name__)

APPEND_FILES = {"trials": TRIALS, "chain": CHAIN, "dataset": DATASET, "metrics": METRICS}
CONFIG_FORMAT = "slhmc-run-config-1"
# Keys (and sections) that a resumed run must keep: they define the target distribution
# (system), the reference energies of the chain (reference.calculator, reference.options), the
# proposal kernel (hmc.timestep, hmc.md_steps, the network's form in potential), which random
# numbers each trial draws (hmc.seed), and what the run's labels and model 0 were made from
# (the start-only potential.initial_model and training.initial_dataset, which may be removed,
# not changed). hmc.deterministic may change: it decides reproducibility, not exactness.
FIXED_KEYS = ("system", "reference.calculator", "reference.options", "hmc.timestep", "hmc.md_steps", "hmc.seed",
              "hmc.cell", "hmc.volume_probability", "hmc.volume_inner_steps", "hmc.volume_step",
              "hmc.volume_adapt_until", "potential", "training.initial_dataset")
START_ONLY_KEYS = ("potential.initial_model", "training.initial_dataset")
EXTXYZ_FLOAT_FORMAT = "%16.8f"  # ase.io.extxyz's format for per-atom float columns


class RunDirectoryError(RuntimeError):
    pass


def structure_digest(atoms: Atoms) -> str:
    """sha256 of what a run takes from a structure: atomic numbers, positions, cell, pbc."""
    h = hashlib.sha256()
    for array, dtype in ((atoms.numbers, "<i8"), (atoms.positions, "<f8"), (atoms.cell.array, "<f8"),
                         (atoms.pbc, "|b1")):
        h.update(np.ascontiguousarray(array, dtype=dtype).tobytes())
    return h.hexdigest()


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def config_record(cfg: Config) -> dict:
    """What config.json holds: the validated config and digests of the files it names."""
    inputs: dict = {"system.structure": {"path": str(cfg.structure_path.resolve()),
                                         "sha256_structure": structure_digest(read(cfg.structure_path))}}
    if cfg.initial_model_path is not None:
        from slhmc.initial import model_file

        model = model_file(cfg.initial_model_path)
        inputs["potential.initial_model"] = {"path": str(model.resolve()), "sha256": file_digest(model)}
    if cfg.training.initial_dataset:
        inputs["training.initial_dataset"] = [{"path": str(p.resolve()), "sha256": file_digest(p)}
                                              for p in cfg.initial_dataset_paths]
    return {"format": CONFIG_FORMAT, "slhmc_version": __version__, "config": cfg.model_dump(mode="json"),
            "inputs": inputs}


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """Dotted keys to leaf values; lists are leaves, and so is ``reference.options`` (free-form)."""
    out: dict[str, object] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and dotted != "reference.options":
            out.update(_flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def _is_fixed(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in FIXED_KEYS)


def resume_changes(old: dict, new: dict) -> tuple[list[str], list[str]]:
    """Compare the config.json of a run (``old``) with ``config_record`` of the config it is
    resumed with (``new``): (refused changes, allowed changes), each ``"key: old -> new"``.

    ``system.structure`` is compared by what it holds (numbers, positions, cell, pbc), so a
    moved or renamed file is fine; start-only keys may be removed. A key that the old record
    lacks (added to slhmc after the run started) is not compared.
    """
    before, after = _flatten(old["config"]), _flatten(new["config"])
    refused, allowed = [], []
    for key in sorted(before.keys() & after.keys()):
        a, b = before[key], after[key]
        if key == "base_dir":
            continue
        if key == "system.structure":
            was, now = old["inputs"]["system.structure"], new["inputs"]["system.structure"]
            if was["sha256_structure"] != now["sha256_structure"]:
                refused.append(f"system.structure: {was['path']} when the run started, now {now['path']}, "
                               "which holds other atoms, positions or cell")
            continue
        if json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True):
            continue
        if key == "reference.options":
            def shown(options: dict, name: str) -> str:
                return repr(options[name]) if name in options else "(not set)"

            refused.extend(f"reference.options.{o}: {shown(a, o)} -> {shown(b, o)}" for o in sorted(set(a) | set(b))
                           if shown(a, o) != shown(b, o))
            continue
        line = f"{key}: {a!r} -> {b!r}"
        if key in START_ONLY_KEYS and b in (None, []):
            allowed.append(line + " (read only when the run started: removing it changes nothing)")
        elif _is_fixed(key):
            refused.append(line)
        else:
            allowed.append(line)
    return refused, allowed


def check_run_dir(out_dir: str | Path, resume: bool, config: Config | None = None, report: bool = True) -> None:
    """What must hold before a run starts in ``out_dir`` (raises RunDirectoryError otherwise): a
    new run needs a directory without a run; ``--resume`` needs a checkpoint and, given
    ``config``, a config that keeps :data:`FIXED_KEYS` as the run started with them.
    ``report``: log the keys that changed and are allowed to."""
    run_dir = Path(out_dir)
    if not resume:
        if any((run_dir / name).exists() for name in (*APPEND_FILES.values(), CHECKPOINT, CONFIG_RECORD)):
            if failed_start(run_dir):
                set_aside_failed_start(run_dir)
                return
            raise RunDirectoryError(f"{run_dir} already holds a run; pass --resume to continue it "
                                    "or choose another --out")
        return
    if not (run_dir / CHECKPOINT).exists():
        hint = (" (the run stopped before its first checkpoint: start it again without --resume; what it left is "
                "moved aside)" if failed_start(run_dir) else "; start a new run instead")
        raise RunDirectoryError(f"--resume: no {CHECKPOINT} in {run_dir}{hint}")
    old = read_config_record(run_dir)
    if config is None or old is None:
        if config is not None and report:
            log.warning("--resume: %s has no %s (a run started by an older slhmc): the config cannot be "
                        "checked against the one the run started with", run_dir, CONFIG_RECORD)
        return
    refused, allowed = resume_changes(old, config_record(config))
    if refused:
        hint = ("\n(settings that only one DFT worker's machine needs, such as a command or a pseudopotential "
                "folder, can go in that worker's own --config file)" if any(r.startswith("reference.") for r in refused)
                else "")
        raise RunDirectoryError(
            f"--resume refused: the config changes what the chain in {run_dir} means (old -> new):\n  "
            + "\n  ".join(refused)
            + f"\nrestore these values (the run's config is in {run_dir / CONFIG_RECORD}) or start a new run "
            "with another --out" + hint)
    if report:
        for line in allowed:
            log.info("--resume: %s", line)
        if any(line.startswith("hmc.deterministic:") for line in allowed):
            log.warning("--resume: hmc.deterministic changed: the chain stays exact, but it is reproducible "
                        "only for a run that was deterministic throughout")


def failed_start(run_dir: Path) -> bool:
    """A run that stopped before its first checkpoint (a port in use, a bad reference option...):
    nothing in it can be resumed, and a new run may start there."""
    trials = run_dir / APPEND_FILES["trials"]
    return (not (run_dir / CHECKPOINT).exists() and (not trials.exists() or trials.stat().st_size == 0)
            and not is_running(run_dir))


def is_running(run_dir: Path) -> bool:
    """A server holds the run's lock (it is bootstrapping now: its files are not leftovers)."""
    import fcntl

    path = run_dir / LOCK
    if not path.exists():
        return False
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


def set_aside_failed_start(run_dir: Path) -> Path:
    """Move what a failed start left (config.json, empty outputs, labels without a checkpoint) to
    ``run_dir/failed-start-N/``: nothing is deleted, and the new run starts clean."""
    n = 1
    while (run_dir / f"failed-start-{n}").exists():
        n += 1
    aside = run_dir / f"failed-start-{n}"
    aside.mkdir()
    names = [*APPEND_FILES.values(), CONFIG_RECORD, EVENTS]  # server.log stays: it is open already
    for name in names:
        path = run_dir / name
        if path.exists():
            (aside / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, aside / name)
    models = run_dir / MODELS
    if models.is_dir():
        for path in list(models.iterdir()):
            (aside / MODELS).mkdir(exist_ok=True)
            os.replace(path, aside / MODELS / path.name)
    log.warning("%s held a run that stopped before its first checkpoint; its files are moved to %s and a new run "
                "starts", run_dir, aside)
    return aside


class RunFiles:
    def __init__(self, out_dir: str | Path, resume: bool, config: Config | None = None) -> None:
        """``config``: checked against the run's config.json on resume (see check_run_dir), and
        recorded in it at the start of a new run (or of the first resume of a run without one)."""
        self.dir = Path(out_dir)
        self.models = self.dir / MODELS
        check_run_dir(self.dir, resume, config)
        if config is not None and read_config_record(self.dir) is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            record = config_record(config)
            if resume:
                record["recorded_at_resume"] = True  # the run started before config.json existed
            atomic_write(self.dir / CONFIG_RECORD, json.dumps(record, indent=2).encode())
        self.models.mkdir(parents=True, exist_ok=True)
        import fcntl

        self._lock = open(self.dir / LOCK, "a")  # held while this server runs (see is_running)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise RunDirectoryError(f"{self.dir} is in use by a running slhmc server; choose another --out") from None
        self.checkpoint: dict | None = None
        if resume:
            self.checkpoint = json.loads((self.dir / CHECKPOINT).read_text())
            for key, name in APPEND_FILES.items():  # a file shorter than the checkpoint says was damaged
                path, offset = self.dir / name, self.checkpoint["offsets"][key]
                size = path.stat().st_size if path.exists() else 0
                if size < offset:
                    self._lock.close()
                    raise RunDirectoryError(f"cannot resume: {path} has {size} bytes, the checkpoint says at least "
                                            f"{offset}; it was truncated or replaced after the run stopped")
            for key, name in APPEND_FILES.items():
                path = self.dir / name
                path.touch()
                os.truncate(path, self.checkpoint["offsets"][key])
        self._files = {key: open(self.dir / name, "a") for key, name in APPEND_FILES.items()}
        self._events = open(self.dir / EVENTS, "a")  # not cut back on resume: what happened, happened

    def offsets(self) -> dict[str, int]:
        for f in self._files.values():
            f.flush()
        return {key: f.tell() for key, f in self._files.items()}

    def write_trial(self, record: dict) -> None:
        self._files["trials"].write(json.dumps(record) + "\n")

    def write_event(self, record: dict) -> None:
        self._events.write(json.dumps(record) + "\n")
        self._events.flush()

    def write_chain(self, atoms: Atoms, energy: float, info: dict) -> None:
        frame = atoms.copy()
        frame.info.update(info)
        frame.calc = SinglePointCalculator(frame, energy=energy)
        write(self._files["chain"], frame, format="extxyz")

    def write_label(self, atoms: Atoms, energy: float, forces: np.ndarray, info: dict,
                    stress: np.ndarray | None = None) -> Atoms:
        """Append a label; returns it with the values a reader of the file gets back.

        extxyz stores positions and forces as "%16.8f" (the energy, the cell and the stress (Voigt,
        eV/Å³) exactly), so the label is rounded the same way here, without parsing the text back (1.5 ms a label).
        tests/test_outputs.py checks this equals ase.io.read of the file.
        """
        frame = atoms.copy()
        frame.info.update(info)
        extra = {} if stress is None else {"stress": np.asarray(stress, dtype=np.float64)}
        frame.calc = SinglePointCalculator(frame, energy=energy, forces=forces, **extra)
        write(self._files["dataset"], frame, format="extxyz")
        stored = frame.copy()
        stored.positions = as_stored(frame.positions)
        stored.calc = SinglePointCalculator(stored, energy=energy, forces=as_stored(np.asarray(forces)), **extra)
        return stored

    def read_dataset(self) -> list[Atoms]:
        self._files["dataset"].flush()
        path = self.dir / APPEND_FILES["dataset"]
        return read(path, index=":", format="extxyz") if path.stat().st_size else []

    def model_path(self, version: int) -> Path:
        return self.models / model_file_name(version)

    def save_model(self, version: int, data: bytes, metrics: dict) -> None:
        atomic_write(self.model_path(version), data)
        self._files["metrics"].write(json.dumps({"version": version, **metrics}) + "\n")

    def save_checkpoint(self, state: dict) -> None:
        state = {**state, "offsets": self.offsets()}
        for f in self._files.values():
            os.fsync(f.fileno())
        atomic_write(self.dir / CHECKPOINT, json.dumps(state).encode())

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._events.close()
        self._lock.close()


def as_stored(values: np.ndarray) -> np.ndarray:
    """Floats as extxyz writes per-atom columns ("%16.8f") and reads them back."""
    return np.char.mod(EXTXYZ_FLOAT_FORMAT, np.asarray(values, dtype=np.float64)).astype(np.float64)


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
