"""The trainer: holds the dataset, fits model versions on request, returns them with metrics.

Everything a fit depends on comes with its train_task: the fit settings, the architecture of a
new model, and (for a warm start) the model to start from; the welcome config is not read.
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from slhmc.potential.network import BPNN, Architecture, resolve_device
from slhmc.potential.serialization import model_from_bytes, model_to_bytes
from slhmc.potential.training import FitSettings, Label, LabelStore, describe_errors, fit

log = logging.getLogger(__name__)


class FitStopped(RuntimeError):
    """The worker is exiting (shutdown, interrupt): the fit in progress is abandoned."""


class TrainerHandler:
    role = "trainer"

    def __init__(self, device: str | None = None) -> None:
        self.device = resolve_device(device)
        self.labels: dict[int, Label] = {}
        self.store: LabelStore | None = None  # featurized labels, kept across refits
        self.model: BPNN | None = None
        self._stopping = threading.Event()

    def close(self) -> None:
        """The worker exits: a fit in progress stops at its next L-BFGS step (a job must not outlive
        its server by the rest of a fit)."""
        self._stopping.set()

    def _check_stop(self, step: int, validation_loss: float) -> None:
        if self._stopping.is_set():
            raise FitStopped(f"the worker is exiting; fit stopped after {step} L-BFGS steps")

    def configure(self, config: dict) -> None:
        """A new server (or the same one again): drop what belonged to the old one."""
        self.labels.clear()  # the server re-sends the dataset after every welcome
        self.store = None
        self.model = None

    def handle(self, msg: dict) -> tuple[str, dict] | None:
        if msg["type"] == "labels":
            for d in msg["labels"]:
                stress = d.get("stress")  # Voigt, eV/Å³; absent or None: the reference gave none
                self.labels[d["label_id"]] = Label(d["numbers"], d["positions"], d["cell"], d["pbc"],
                                                   d["energy"], d["forces"], d["label_id"],
                                                   None if stress is None else np.asarray(stress, dtype=np.float64))
            return None
        if msg["type"] != "train_task":
            raise ValueError(f"a trainer does not handle {msg['type']}")
        if msg["warm_start"] and msg.get("model") is not None:
            self._adopt(msg["model"])
        return "train_result", self.train(msg["version"], [int(i) for i in msg["label_ids"]], msg["warm_start"],
                                          FitSettings(**msg["fit"]), Architecture(**msg["architecture"]))

    def _adopt(self, data: bytes) -> None:
        """Warm-start from the server's current model, not from whatever this process holds."""
        self.model, _ = model_from_bytes(data, self.device)

    def train(self, version: int, label_ids: list[int], warm_start: bool, settings: FitSettings,
              architecture: Architecture) -> dict:
        """Fit model ``version`` on ``label_ids``; ``architecture`` shapes a new model (none held yet)."""
        missing = [i for i in label_ids if i not in self.labels]
        if missing:
            raise RuntimeError(f"labels {missing[:5]}... were never received ({len(missing)} missing)")
        warm = warm_start and self.model is not None
        if self.model is None:
            elements = sorted({int(z) for i in label_ids for z in self.labels[i].numbers})
            self.model = architecture.build(elements, self.device)
        if self.store is None or not self.store.compatible(self.model, settings.force_atoms, settings.full_force_mb):
            self.store = LabelStore(self.model, settings.force_atoms, settings.full_force_mb)
        # in label order, so that the store's chunks are the same whenever the same labels arrive
        self.store.featurize_and_add(self.model, (self.labels[i] for i in sorted(label_ids)))
        # settings.seed is the run's: one split for the whole run, a label validated on is never trained on
        metrics = fit(self.model, self.store, settings, warm_start=warm, label_ids=label_ids, progress=self._check_stop)
        metrics["warm_start"] = warm
        log.info("model %d: %d labels, validation %s, %.1f s", version, len(label_ids),
                 describe_errors(metrics["validation"]), metrics["seconds"])
        data = model_to_bytes(self.model, {"version": version, "metrics": metrics})
        return {"version": version, "model": data, "metrics": metrics}
