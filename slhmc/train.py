"""``slhmc train``: fit a network on labelled frames with a config's [potential] and [training].

The use: refit a bigger network, or the same one to convergence, on an SLHMC run's
``dataset.extxyz`` (or any frames with energy and forces that ase.io reads; a frame's stress,
where it has one, is fitted too with ``[training] stress_weight``) for production MD,
and benchmark the trainer. The fit is the trainer's own (``slhmc.potential.training``); only
the [potential] and [training] sections of CONFIG are read, so a config with just those works.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from tqdm import tqdm

from slhmc.config import ConfigError, PotentialConfig, TrainingConfig, describe_errors, read_toml, trainer_settings
from slhmc.potential.network import resolve_device
from slhmc.potential.serialization import save_model
from slhmc.potential.training import Label, LabelStore, fit

log = logging.getLogger(__name__)


class _TrainSections(BaseModel):
    """The two sections ``slhmc train`` reads; the others are somebody else's (ignored here)."""

    model_config = ConfigDict(extra="ignore")
    potential: PotentialConfig = Field(default_factory=PotentialConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)


def read_sections(config_path: str | Path) -> tuple[PotentialConfig, TrainingConfig]:
    """The [potential] and [training] sections of a config file, validated (other sections ignored)."""
    path = Path(config_path)
    try:
        sections = _TrainSections.model_validate(read_toml(path))
    except ValidationError as err:
        raise ConfigError(describe_errors(err, str(path))) from None
    return sections.potential, sections.training


def read_labels(paths: list[str | Path]) -> list[Label]:
    """Every frame of every file, numbered in order; each must carry an energy and forces, and its
    stress (eV/Å³, ASE's Voigt order and sign) is kept where it has one."""
    from ase.io import read

    labels: list[Label] = []
    for path in paths:
        try:
            frames = read(path, ":")
        except FileNotFoundError:
            raise ValueError(f"dataset {path} does not exist") from None
        except Exception as err:
            raise ValueError(f"dataset {path}: ase.io.read cannot read it ({err})") from None
        for k, atoms in enumerate(frames):
            try:
                labels.append(Label.from_atoms(atoms, label_id=len(labels)))
            except Exception as err:
                raise ValueError(f"dataset {path}, frame {k}: no energy and forces ({err})") from None
            label = labels[-1]
            if not np.all(np.isfinite(label.forces)) or not np.isfinite(label.energy):
                raise ValueError(f"dataset {path}, frame {k}: energy or forces are not finite")
            if label.stress is not None and not np.all(np.isfinite(label.stress)):
                raise ValueError(f"dataset {path}, frame {k}: the stress is not finite")
            if label.stress is not None and abs(np.linalg.det(label.cell)) <= 0:
                raise ValueError(f"dataset {path}, frame {k}: a stress but no cell (zero volume)")
    if not labels:
        raise ValueError("the datasets hold no frames")
    return labels


def train_model(
    config_path: str | Path,
    datasets: list[str | Path],
    out: str | Path,
    progress: bool = True,
    device: str | None = None,
    seed: int = 0,
) -> dict:
    """Fit a new network on ``datasets`` and write it to ``out`` (safetensors); returns the metrics."""
    pot, training = read_sections(config_path)
    labels = read_labels(datasets)
    settings, architecture = trainer_settings(pot, training, seed)
    model = architecture.build(sorted({int(z) for lab in labels for z in lab.numbers}), resolve_device(device))
    store = LabelStore(model, settings.force_atoms, settings.full_force_mb)
    for label in tqdm(labels, desc="descriptors", unit="frame", disable=not progress, dynamic_ncols=True):
        store.featurize_and_add(model, [label])
    bar = tqdm(total=settings.max_steps, desc="L-BFGS", unit="step", disable=not progress, dynamic_ncols=True)

    def step(k: int, validation_loss: float) -> None:
        bar.update(1)
        bar.set_postfix(val_loss=f"{validation_loss:.3g}")

    try:
        metrics = fit(model, store, settings, warm_start=False, progress=step)
    finally:
        bar.close()
    metrics["datasets"] = [str(p) for p in datasets]
    n_stress = sum(lab.stress is not None for lab in labels)
    if n_stress:
        val = metrics["validation"]
        log.info("%d of %d frames have a stress (stress_weight %g); validation stress RMSE %s GPa", n_stress,
                 len(labels), settings.stress_weight,
                 "n/a" if val.get("stress_rmse_GPa") is None else f"{val['stress_rmse_GPa']:.3g}")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    save_model(out, model, {"version": 0, "metrics": metrics, "trained_by": "slhmc train"})
    log.info("model written to %s", out)
    return metrics
