"""Starting a run from what the user already has: ``potential.initial_model`` and
``training.initial_dataset``.

- ``training.initial_dataset``: labelled frames (energy and forces, any ``ase.io.read`` format)
  that become labels of the run before the bootstrap (``source=initial`` in dataset.extxyz) and
  take part in every fit. The energy taken is the force-consistent one (``free_energy`` where
  the file has it), as the DFT worker takes it. Frames may differ from the start structure in
  size and cell, but may hold only its elements.
- ``potential.initial_model``: a model file, or a run directory (its newest model). It becomes
  model 0 as it is (no fit of model 0), and every refit warm-starts from the model before, so
  its descriptor, hidden layers and activation are those of every later model too: they win
  over ``[potential]``, and each key that differs is logged when the run starts. Its elements
  must cover those of the start structure and the initial dataset.

Both are checked by :func:`check_initial_inputs` (part of the config check, before any process
starts); errors name the key and the file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols

from .config import Config, ConfigError, trainer_settings

MODEL_KEY = "potential.initial_model"
DATASET_KEY = "training.initial_dataset"


@dataclass(frozen=True)
class InitialFrame:
    """One labelled frame of ``training.initial_dataset``."""

    atoms: Atoms  # numbers, positions (Å), cell (Å), pbc only
    energy: float  # eV, force-consistent
    forces: np.ndarray  # (N, 3) eV/Å
    file: str  # the path as the config gives it
    index: int  # frame index in that file
    stress: np.ndarray | None = None  # Voigt, eV/Å³, where the frame has one


@dataclass(frozen=True)
class InitialModel:
    """The model file that ``potential.initial_model`` names, read and checked."""

    path: Path  # the model file (the newest one where the config names a run directory)
    data: bytes  # the file's bytes: model 0 of the run, unchanged
    hyperparameters: dict  # descriptor (elements, cutoffs, parameters), hidden, activation, dtype
    info: dict  # what the model file says about itself (version, metrics of its own fit)

    @property
    def elements(self) -> list[int]:
        return [int(z) for z in self.hyperparameters["descriptor"]["elements"]]

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def _symbols(numbers) -> str:
    return ", ".join(chemical_symbols[z] for z in sorted({int(z) for z in numbers}))


def model_file(path: Path) -> Path:
    """A model file as given, or the newest ``models/model_*.safetensors`` of a run directory."""
    if path.is_dir():
        files = sorted((path / "models").glob("model_*.safetensors"))
        if not files:
            raise ConfigError(f"{MODEL_KEY}: {path} is a directory without models/model_*.safetensors")
        return files[-1]
    if not path.exists():
        raise ConfigError(f"{MODEL_KEY}: {path} does not exist")
    return path


def load_initial_model(path: Path, elements: set[int] | None = None) -> InitialModel:
    """Read and check the initial model; ``elements`` (atomic numbers) must all be in it."""
    from slhmc.potential.serialization import model_from_bytes

    file = model_file(path)
    try:
        data = file.read_bytes()
        model, info = model_from_bytes(data, "cpu")  # the whole model must load, not only its header
    except Exception as err:  # OSError, not an slhmc model, wrong tensors: all say the same to the user
        raise ConfigError(f"{MODEL_KEY}: cannot load {file} as an slhmc model: {err}") from None
    loaded = InitialModel(file, data, model.hyperparameters(), info)
    missing = set(elements or ()) - set(loaded.elements)
    if missing:
        raise ConfigError(f"{MODEL_KEY}: {file} is a model for {_symbols(loaded.elements)}, without "
                          f"{_symbols(missing)} of system.structure / {DATASET_KEY}")
    return loaded


def read_initial_dataset(cfg: Config, elements: set[int] | None = None) -> list[InitialFrame]:
    """Every frame of ``training.initial_dataset``, checked: energy and forces present and finite,
    forces of shape (N, 3), and (where ``elements`` is given) only those elements."""
    from ase.io import read

    from slhmc.clients.references import reference_energy
    from slhmc.potential.training import stored_stress

    frames: list[InitialFrame] = []
    for name, path in zip(cfg.training.initial_dataset, cfg.initial_dataset_paths, strict=True):
        if not path.is_file():
            raise ConfigError(f"{DATASET_KEY}: {path} does not exist")
        try:
            images = read(path, index=":")
        except Exception as err:
            raise ConfigError(f"{DATASET_KEY}: ase.io.read cannot read {path}: {err}") from None
        if not isinstance(images, list):
            images = [images]
        if not images:
            raise ConfigError(f"{DATASET_KEY}: {path} holds no frames")
        for index, frame in enumerate(images):
            where = f"{DATASET_KEY}: {path}, frame {index}"
            try:
                energy = reference_energy(frame)
                forces = np.asarray(frame.get_forces(), dtype=np.float64)
            except Exception as err:  # no calculator, or one without energy or forces
                raise ConfigError(f"{where} has no energy and forces ({type(err).__name__}: {err}); "
                                  "labelled frames are needed") from None
            if forces.shape != (len(frame), 3):
                raise ConfigError(f"{where}: forces of shape {forces.shape}, expected ({len(frame)}, 3)")
            if not (np.isfinite(energy) and np.isfinite(forces).all()):
                raise ConfigError(f"{where}: energy or forces are not finite")
            foreign = set(frame.numbers.tolist()) - elements if elements is not None else set()
            if foreign:
                raise ConfigError(f"{where} holds {_symbols(foreign)}, which system.structure has not "
                                  f"(it has {_symbols(elements)})")
            stress = stored_stress(frame)
            if stress is not None and not np.isfinite(stress).all():
                raise ConfigError(f"{where}: stress is not finite")
            atoms = Atoms(frame.numbers, frame.positions, cell=frame.cell, pbc=frame.pbc)
            frames.append(InitialFrame(atoms, float(energy), forces, name, index, stress))
    return frames


def potential_overrides(cfg: Config, model: InitialModel) -> dict[str, tuple[object, object]]:
    """``[potential]`` keys whose config value differs from the initial model's:
    key -> (config value, model value). The model's values are the ones the run uses."""
    _, arch = trainer_settings(cfg.potential, cfg.training, cfg.hmc.seed)
    hyper = model.hyperparameters
    descriptor = hyper["descriptor"]
    ours = {"cutoff": arch.cutoff, "angular_cutoff": arch.angular_cutoff, "hidden": list(arch.hidden),
            "activation": arch.activation}
    theirs = {"cutoff": descriptor["cutoff"], "angular_cutoff": descriptor["angular_cutoff"],
              "hidden": list(hyper["hidden"]), "activation": hyper["activation"]}
    return {f"potential.{k}": (ours[k], theirs[k]) for k in ours if json.dumps(ours[k]) != json.dumps(theirs[k])}


def check_initial_inputs(cfg: Config) -> None:
    """The config check of ``potential.initial_model`` and ``training.initial_dataset``."""
    if cfg.initial_model_path is None and not cfg.training.initial_dataset:
        return
    from ase.io import read

    elements = {int(z) for z in read(cfg.structure_path).numbers}
    try:
        read_initial_dataset(cfg, elements)
        if cfg.initial_model_path is not None:
            load_initial_model(cfg.initial_model_path, elements)  # the frames hold no other elements
    except ConfigError as err:  # in the form of the other config errors: the file, then "  key: message"
        raise ConfigError(f"invalid config {cfg._source}:\n  {err}") from None
