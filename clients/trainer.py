"""The trainer: holds the dataset, fits model versions on request, returns them with metrics."""

from __future__ import annotations

import logging

from slhmc.potential.descriptors import DescriptorSpec
from slhmc.potential.network import BPNN, resolve_device
from slhmc.potential.serialization import model_from_bytes, model_to_bytes
from slhmc.potential.training import FitSettings, Label, LabelStore, fit

log = logging.getLogger(__name__)


class TrainerHandler:
    role = "trainer"

    def __init__(self, device: str | None = None) -> None:
        self.device = resolve_device(device)
        self.config: dict = {}
        self.labels: dict[int, Label] = {}
        self.store: LabelStore | None = None  # featurized labels, kept across refits
        self.model: BPNN | None = None

    def configure(self, config: dict) -> None:
        self.config = config
        self.labels.clear()  # the server re-sends the dataset after every welcome
        self.store = None
        self.model = None

    def handle(self, msg: dict) -> tuple[str, dict] | None:
        if msg["type"] == "labels":
            for d in msg["labels"]:
                self.labels[d["label_id"]] = Label(d["numbers"], d["positions"], d["cell"], d["pbc"],
                                                   d["energy"], d["forces"], d["label_id"])
            return None
        if msg["type"] != "train_task":
            raise ValueError(f"a trainer does not handle {msg['type']}")
        if msg["warm_start"] and msg.get("model") is not None:
            self._adopt(msg["model"])
        return "train_result", self.train(msg["version"], [int(i) for i in msg["label_ids"]], msg["warm_start"])

    def _adopt(self, data: bytes) -> None:
        """Warm-start from the server's current model, not from whatever this process holds."""
        self.model, _ = model_from_bytes(data, self.device)

    def _new_model(self, label_ids: list[int]) -> BPNN:
        pot = self.config["potential"]
        elements = sorted({int(z) for i in label_ids for z in self.labels[i].numbers})
        spec = DescriptorSpec.default(elements, pot["cutoff"], pot.get("angular_cutoff"))
        return BPNN(spec, tuple(pot["hidden"]), pot.get("activation", "tanh")).to(self.device)

    def train(self, version: int, label_ids: list[int], warm_start: bool) -> dict:
        missing = [i for i in label_ids if i not in self.labels]
        if missing:
            raise RuntimeError(f"labels {missing[:5]}... were never received ({len(missing)} missing)")
        cfg_train = self.config["training"]
        warm = warm_start and self.model is not None
        if self.model is None:
            self.model = self._new_model(label_ids)
        force_atoms, full_force_mb = int(cfg_train["force_atoms"]), float(cfg_train["full_force_mb"])
        if self.store is None or not self.store.compatible(self.model, force_atoms, full_force_mb):
            self.store = LabelStore(self.model, force_atoms, full_force_mb)
        # in label order, so that the store's chunks are the same whenever the same labels arrive
        self.store.featurize_and_add(self.model, (self.labels[i] for i in sorted(label_ids)))
        settings = FitSettings(
            force_weight=cfg_train["force_weight"],
            validation_fraction=cfg_train["validation_fraction"],
            max_steps=cfg_train["max_steps"],
            patience=cfg_train["patience"],
            min_improvement=cfg_train["min_improvement"],
            # one split for the whole run: a label validated on must never have been trained on
            seed=int(self.config["hmc"]["seed"]),
        )
        metrics = fit(self.model, self.store, settings, warm_start=warm, label_ids=label_ids)
        metrics["warm_start"] = warm
        val = metrics["validation"]
        log.info("model %d: %d labels, validation %s meV/atom, %s meV/Å, %.1f s", version, len(label_ids),
                 val["energy_rmse_mev_per_atom"], val["force_rmse_mev_per_A"], metrics["seconds"])
        data = model_to_bytes(self.model, {"version": version, "metrics": metrics})
        return {"version": version, "model": data, "metrics": metrics}

