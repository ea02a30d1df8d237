"""The Python API: start or continue a run from a script or a notebook, and read any run directory.

    import slhmc
    run = slhmc.run("examples/cu32_emt/config.toml", out="runs/cu32")   # what `slhmc run` does
    run.summary()["acceptance"]; run.chain[-1]; run.calculator()

:func:`run` takes a config file, a dict of the same shape as the TOML or a
:class:`slhmc.config.Config`; the start structure may be an ``ase.Atoms``. It checks the config
and the run directory as ``slhmc run`` does (the same :class:`~slhmc.config.ConfigError` naming
the key, the same refusal of a directory that already holds a run), then starts the server and
the workers through the launcher of ``slhmc run`` (:mod:`slhmc.launcher`) and waits for the end.

A config that is not a file (a dict, a ``Config``, an ``Atoms``) is written into the run
directory, as ``config.toml`` and ``start.extxyz``, so the run is self-contained: the worker
processes read it, and ``slhmc run DIR/config.toml --out DIR --resume`` continues the run without
Python. :class:`Run` reads the files of a run directory (also while the run is going):
the trial log, the chain, the labels, the model versions and their fit metrics; ``summary()``
is what ``slhmc analyze`` writes to summary.json.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slhmc.rundir import (
    CHAIN,
    CHECKPOINT,
    DATASET,
    MODEL_GLOB,
    MODELS,
    SERVER_LOG,
    model_file_name,
    read_config_record,
    read_frames,
    read_metrics,
    read_trials,
)

if TYPE_CHECKING:
    import numpy as np
    from ase import Atoms

    from slhmc.config import Config
    from slhmc.potential import BPNNCalculator

log = logging.getLogger(__name__)

CONFIG_FILE = "config.toml"  # the config of a run started from Python, in its run directory
START_FILE = "start.extxyz"  # its start structure when given as ase.Atoms
_HEADER = "# written by slhmc.run"  # marks a CONFIG_FILE that slhmc.run may replace
EXIT_INTERRUPTED = (130, -2)  # the server stopped by Ctrl-C (SIGINT)

__all__ = ["Run", "RunError", "analyze", "run", "thermal_expansion"]


class RunError(RuntimeError):
    """A run that could not start or did not finish (the message says why and where to look)."""


def analyze(path: str | os.PathLike, plots: bool = True) -> dict:
    """``slhmc analyze`` without the printing: analyses a run or an ``slhmc md`` directory, writes
    summary.json, rdf.json and (``plots``) the PNG files into it, and returns summary.json's content
    (energies in eV/atom, ML errors in meV/atom, temperatures in K, times in s). FileNotFoundError
    for a missing directory, ValueError while there is nothing to analyse yet."""
    from slhmc.analysis import summarize_dir

    return summarize_dir(path, plots)


def thermal_expansion(run_dirs: list[str | os.PathLike], out: str | os.PathLike = ".", plots: bool = True) -> dict:
    """``slhmc analyze RUN_T1 RUN_T2 ... --out OUT`` without the printing: ⟨V⟩/atom of NPT runs of
    one system at several temperatures, α_V = Δln⟨V⟩/ΔT and α = α_V/3 (1/K) between consecutive
    ones; writes expansion.json (and ``plots``: expansion.png) into ``out`` and returns its content.
    ``slhmc.analysis.expansion.ExpansionError`` for runs that give no expansion (NVT, one
    temperature, different systems)."""
    from slhmc.analysis.expansion import thermal_expansion as expansion

    return expansion(list(run_dirs), out, plots)


class Run:
    """A run directory (``slhmc run`` / ``slhmc server --out`` / :func:`run`), read from its files.

    Every attribute reads the files when asked, so a run that is still going shows its newest
    state; records or frames that the server is writing at that moment are left out.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise FileNotFoundError(f"no such run directory: {self.path}")

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    def __fspath__(self) -> str:  # a Run goes wherever a path to the run does (load_calculator, analyze, ...)
        return str(self.path)

    @property
    def config(self) -> dict | None:
        """The validated config the run started with (config.json), as a dict; None for a run that
        has not started yet or was started by an slhmc that did not record it."""
        record = read_config_record(self.path)
        return None if record is None else record["config"]

    @property
    def checkpoint(self) -> dict | None:
        """The server's checkpoint (``trial``: finished trials, ``n_labels``, ...); None before the first."""
        path = self.path / CHECKPOINT
        return json.loads(path.read_text()) if path.exists() else None

    @property
    def trials(self) -> list[dict]:
        """One dict per finished trial, in order (trials.jsonl): ``accepted``, ``model`` (the version
        that proposed it), energies ``e_ref``, ``e_ml``, ``e_chain``, ... in eV for the whole cell,
        ``delta_h`` in eV, timings in s."""
        return read_trials(self.path)

    def trial_arrays(self) -> dict[str, np.ndarray]:
        """The trials as columns: one numpy array per field that every trial has (units as in
        :attr:`trials`); ``{}`` before the first trial."""
        import numpy as np

        trials = self.trials
        if not trials:
            return {}
        fields = [k for k in trials[0] if all(k in t for t in trials)]
        return {k: np.array([t[k] for t in trials]) for k in fields}

    @property
    def chain(self) -> list[Atoms]:
        """The chain state after every trial (chain.extxyz); ``get_potential_energy()`` of a frame is
        its reference energy (eV)."""
        return read_frames(self.path / CHAIN)

    @property
    def dataset(self) -> list[Atoms]:
        """Every reference label (dataset.extxyz): energy (eV) and forces (eV/Å) through
        ``get_potential_energy()`` / ``get_forces()``; ``info["source"]`` says where it came from."""
        return read_frames(self.path / DATASET)

    @property
    def model_versions(self) -> list[int]:
        """The versions of the saved models (models/model_NNNN.safetensors), oldest first."""
        return sorted(int(p.stem.split("_")[1]) for p in (self.path / MODELS).glob(MODEL_GLOB))

    @property
    def metrics(self) -> list[dict]:
        """One dict per model version saved (models/metrics.jsonl): ``version`` and its fit's metrics
        (RMSEs in meV/atom and meV/Å, ``seconds``, ...)."""
        return read_metrics(self.path)

    def model_path(self, version: int | None = None) -> Path:
        """The file of model ``version`` (default: the newest); FileNotFoundError if there is none."""
        versions = self.model_versions
        if not versions:
            raise FileNotFoundError(f"no {MODELS}/{MODEL_GLOB} in {self.path} yet")
        if version is None:
            version = versions[-1]
        if version not in versions:
            raise FileNotFoundError(f"{self.path} has no model version {version} (it has {versions})")
        return self.path / MODELS / model_file_name(version)

    def calculator(self, version: int | None = None, device: str | None = None) -> BPNNCalculator:
        """An ASE calculator of model ``version`` (default: the newest); energies in eV, forces in eV/Å.
        ``device``: "cpu", "cuda", ...; by default the GPU when torch has one."""
        from slhmc.potential import load_calculator

        return load_calculator(self.model_path(version), device=device)

    def summary(self, plots: bool = True) -> dict:
        """What ``slhmc analyze`` writes to summary.json (see :func:`analyze`), computed now."""
        return analyze(self.path, plots)


def run(config: str | os.PathLike | Mapping | Config, out: str | os.PathLike, resume: bool = False, *,
        structure: str | os.PathLike | Atoms | None = None, progress: bool = True, bind: str | None = None) -> Run:
    """Run SLHMC on this machine to the end, as ``slhmc run CONFIG --out OUT [--resume]`` does, and
    return the :class:`Run` of ``out``.

    ``config``: a config file (TOML), a dict of the same shape (``{"system": {"structure": ...,
    "temperature": 300.0}, "hmc": {...}, ...}``) or a :class:`slhmc.config.Config`. Relative paths
    in a dict are relative to the current directory, in a ``Config`` to its ``base_dir``.
    ``structure``: the start structure, a file (relative to the current directory) or an
    ``ase.Atoms``, instead of ``system.structure`` (a dict's ``system.structure`` may itself be an
    ``Atoms``).
    ``resume``: continue the run in ``out`` from its checkpoint (``hmc.trials`` may grow; a change of
    what the chain means is refused).
    ``progress``: the server's progress bar (shown when stderr is a terminal); False silences the
    server, whose messages then go to ``out/logs/server.out`` (and its log to ``out/server.log``).
    ``bind``: the server's ZeroMQ address; by default a private ipc:// socket.

    Raises :class:`~slhmc.config.ConfigError` for a config that cannot be used (naming the key),
    :class:`~slhmc.server.outputs.RunDirectoryError` when ``out`` already holds a run and ``resume``
    is False (or holds none to resume), :class:`RunError` when the server fails, and
    KeyboardInterrupt when interrupted (the checkpoint holds the last finished trial: ``resume=True``
    continues from there).
    """
    from slhmc.config import ConfigError, check_inputs, load_config
    from slhmc.launcher import check_reference, run_all
    from slhmc.server.outputs import RunDirectoryError, check_run_dir

    out_dir = Path(out)
    if resume and not out_dir.is_dir():
        raise RunDirectoryError(f"resume: no such run directory: {out_dir}")
    text = None
    if isinstance(config, str | os.PathLike) and structure is None:
        config_path = Path(config)
        cfg = load_config(config_path)  # exactly the file `slhmc run` would be given
    else:
        cfg, text, atoms = _from_python(config, out_dir, structure)
        config_path = out_dir / CONFIG_FILE
        _check_own_files(out_dir, resume, atoms is not None)
        check_run_dir(out_dir, resume)  # nothing is written into a directory that holds a run (or none to resume)
        if atoms is not None:
            _write_start(atoms, out_dir, resume)
    check_inputs(cfg, local_reference=True)
    check_run_dir(out_dir, resume, cfg, report=False)  # RunDirectoryError before any process starts
    problem = check_reference(cfg)
    if problem:
        raise ConfigError(f"invalid config {cfg._source}:\n  reference: {problem}")
    if text is not None:  # only now: a config refused above does not replace the run's own
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = config_path.with_name(config_path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, config_path)
    status = run_all(cfg, str(config_path), str(out_dir), resume, bind, progress, console=progress)
    if status in EXIT_INTERRUPTED:
        raise KeyboardInterrupt(f"run in {out_dir} stopped; its checkpoint holds the last finished trial "
                                "(resume=True continues it)")
    if status != 0:
        raise RunError(f"the slhmc server of {out_dir} exited with status {status}; the end of "
                       f"{out_dir / SERVER_LOG}:\n{_tail(out_dir / SERVER_LOG)}")
    return Run(out_dir)


def _from_python(config: str | os.PathLike | Mapping | Config, out_dir: Path,
                 structure: str | os.PathLike | Atoms | None) -> tuple[Config, str, Atoms | None]:
    """Validate ``config`` as the config of a run in ``out_dir``: returns it as read from
    ``out_dir/CONFIG_FILE`` (its paths relative to ``out_dir`` when inside it, else absolute), the
    text of that file, and the start structure when it is an ``Atoms`` (to go to START_FILE)."""
    import tomllib

    from ase import Atoms

    from slhmc.config import Config, ConfigError, from_dict, read_toml

    if isinstance(config, Config):
        data = config.model_dump(mode="json", exclude={"base_dir"}, exclude_none=True)
        source, base_dir = config._source, Path(config.base_dir)
    elif isinstance(config, Mapping):
        data = dict(config)  # shallow copy: only "system" is replaced below
        source, base_dir = "<dict>", Path(data.pop("base_dir", "."))
    else:
        source, base_dir = str(config), Path(config).resolve().parent
        data = read_toml(config)
    system = data.get("system")
    if isinstance(structure, str | os.PathLike):
        structure = str(Path(structure).resolve())  # an argument: relative to the current directory
    if structure is not None:
        system = {**system, "structure": structure} if isinstance(system, Mapping) else {"structure": structure}
    atoms = None
    if isinstance(system, Mapping):
        system = dict(system)
        if isinstance(system.get("structure"), Atoms):
            atoms = system["structure"]
            system["structure"] = str((out_dir / START_FILE).resolve())  # where it will be
        elif isinstance(system.get("structure"), os.PathLike):
            system["structure"] = os.fspath(system["structure"])
        data["system"] = system
    cfg = from_dict(data, source, base_dir)  # a typo'd key: the ConfigError of a TOML file, naming it

    record = cfg.model_dump(mode="json", exclude={"base_dir"}, exclude_none=True)
    record["system"]["structure"] = _path_from(out_dir, cfg.structure_path)
    if cfg.initial_model_path is not None:
        record["potential"]["initial_model"] = _path_from(out_dir, cfg.initial_model_path)
    if cfg.training.initial_dataset:
        record["training"]["initial_dataset"] = [_path_from(out_dir, p) for p in cfg.initial_dataset_paths]
    config_file = out_dir / CONFIG_FILE
    try:
        text = (f"{_HEADER} from {source}; `slhmc run {config_file} --out {out_dir} --resume` continues the run\n"
                + to_toml(record))
    except TypeError as err:
        raise ConfigError(f"invalid config {source}:\n  {err}") from None
    if tomllib.loads(text) != record:  # the file must say exactly what was validated
        raise ConfigError(f"invalid config {source}: a value has no exact TOML form")
    cfg = from_dict(record, source, out_dir.resolve())  # what load_config(config_file) will give
    return cfg, text, atoms


def _check_own_files(out_dir: Path, resume: bool, writes_start: bool) -> None:
    """Refuse to replace a CONFIG_FILE or START_FILE in ``out_dir`` that slhmc.run did not write
    (``out`` pointed at a folder of the user's own files)."""
    config_file = out_dir / CONFIG_FILE
    ours = config_file.exists() and config_file.read_text().startswith(_HEADER)
    if config_file.exists() and not ours:
        raise RunError(f"{config_file} exists and was not written by slhmc.run; choose another out "
                       f"(slhmc.run writes the run's config there)")
    start = out_dir / START_FILE
    if writes_start and start.exists() and not ours and not resume:
        raise RunError(f"{start} exists and was not written by slhmc.run; choose another out "
                       f"(slhmc.run writes the start structure there)")


def _path_from(out_dir: Path, path: Path) -> str:
    path, base = path.resolve(), out_dir.resolve()
    return str(path.relative_to(base)) if path.is_relative_to(base) else str(path)


def _extxyz(atoms: Atoms) -> str:
    from ase.io import write

    frame = atoms.copy()
    frame.calc = None  # a calculator's results would be written as if they were labels
    buf = io.StringIO()
    write(buf, frame, format="extxyz")
    return buf.getvalue()


def _write_start(atoms: Atoms, out_dir: Path, resume: bool) -> None:
    """START_FILE from ``atoms``. On resume, an existing START_FILE is kept: one with other atoms,
    positions or cell than ``atoms`` would change what the chain means, and is refused."""
    from ase.io import read

    from slhmc.server.outputs import RunDirectoryError, structure_digest

    path = out_dir / START_FILE
    text = _extxyz(atoms)
    if resume and path.exists():
        # compared as stored (extxyz rounds positions to 1e-8 Å), as the server compares structures
        if structure_digest(read(io.StringIO(text), format="extxyz")) != structure_digest(read(path)):
            raise RunDirectoryError(f"resume refused: the start structure given holds other atoms, positions or "
                                    f"cell than {path}, which the run in {out_dir} started from")
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# TOML output: the config's values are tables, strings, numbers, booleans and lists of them
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON's string escapes are TOML basic-string escapes
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_toml_key(str(k))} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"{value!r} ({type(value).__name__}) has no TOML form")


def to_toml(data: Mapping, prefix: str = "") -> str:
    """``data`` as TOML: top-level tables become ``[section]`` headers (nested ones
    ``[section.key]``), everything else ``key = value``. TypeError for a value TOML cannot hold
    (None, an object)."""
    lines = [f"{_toml_key(str(k))} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, Mapping)]
    text = "\n".join(lines) + ("\n" if lines else "")
    for key, value in data.items():
        if isinstance(value, Mapping):
            name = f"{prefix}.{_toml_key(str(key))}" if prefix else _toml_key(str(key))
            text += f"\n[{name}]\n" + to_toml(value, name)
    return text
