"""The HMC server: one Markov chain driven through the broker.

Phases: bootstrap (label the start structure and perturbed, strained copies; fit model 0), then
trials. One trial t (DESIGN section 2):

  momenta from the (seed, t) stream -> mlmd worker integrates L velocity-Verlet steps with the
  ML forces of one model version -> a dft worker labels the end point -> the server computes the
  exact ΔH with kinetic energies and accepts with min(1, exp(-ΔH/kT)).

With several DFT workers and ``workers.prefetch``, up to one proposal per DFT worker is in flight
along the most probable accept/reject path (slhmc.server.prefetch); results are consumed in
chain order, so the chain is the one a single worker would produce.

Every label (accepted or not) is written to dataset.extxyz and forwarded to the trainer; after
``training.interval`` new labels a refit is requested, and its model is used by later trials. In
deterministic mode refits happen at fixed chain trials, train on chain labels only (not on
speculative ones, whose number depends on the worker count), and the chain waits for them. A
refit is not requested when every remaining trial's trajectory has already started (no trial
could use its model), and a refit still running after the last trial is abandoned, not waited
for (the checkpoint keeps it: a --resume with more hmc.trials requests it again). A failed
reference call is retried and then stops the run: it is never turned into a rejection.

``training.initial_dataset`` frames are the first labels of a new run (``source=initial``),
before the bootstrap; ``potential.initial_model`` is model 0 as it is, instead of a fit
(slhmc.initial).
"""

from __future__ import annotations

import logging
import time

import numpy as np
from ase import Atoms
from ase.io import read
from tqdm import tqdm

from slhmc.config import Config
from slhmc.initial import InitialModel, load_initial_model, potential_overrides, read_initial_dataset
from slhmc.potential.serialization import model_from_bytes
from slhmc.protocol import structure_fields

from . import chain
from .broker import Broker, Completed, Failed, Joined, Lost, Task, Worker
from .outputs import RunFiles
from .prefetch import AcceptanceEstimate, Proposal

log = logging.getLogger(__name__)

LABEL_CHUNK = 100  # labels per message to the trainer


class RunAborted(RuntimeError):
    pass


def bootstrap_structures(start: Atoms, n: int, displacement: float, strain: float, seed: int) -> list[Atoms]:
    """``n`` copies of ``start``, isotropically strained by up to ±strain (periodic directions)
    and randomly displaced with an rms displacement of ``displacement`` Å per atom."""
    rng = np.random.default_rng([seed, 0x5EED])
    out = []
    for _ in range(n):
        a = start.copy()
        if a.pbc.any():
            a.set_cell(a.cell.array * (1.0 + rng.uniform(-strain, strain)), scale_atoms=True)
        a.positions += rng.normal(0.0, displacement / np.sqrt(3.0), a.positions.shape)
        out.append(a)
    return out


def wire_label(frame: Atoms) -> dict:
    """A dataset frame as the ``labels`` message carries it."""
    return {**structure_fields(frame), "label_id": int(frame.info["label_id"]),
            "energy": float(frame.get_potential_energy()), "forces": frame.get_forces().astype(np.float64)}


class HMCServer:
    def __init__(
        self,
        config: Config,
        out_dir: str,
        bind: str = "tcp://127.0.0.1:5555",
        resume: bool = False,
        progress: bool = True,
        socket_setup=None,
    ) -> None:
        self.cfg = config
        self.files = RunFiles(out_dir, resume, config)
        start = read(config.structure_path)
        self.template = Atoms(start.numbers, start.positions, cell=start.cell, pbc=start.pbc)
        self.masses = start.get_masses()
        self.n_atoms = len(start)
        self.temperature = config.system.temperature
        self.broker = Broker(
            bind,
            config.model_dump(mode="json"),
            heartbeat_s=config.workers.heartbeat,
            timeout_s=config.workers.timeout,
            socket_setup=socket_setup,
        )
        self.endpoint = self.broker.endpoint
        self.labels: list[dict] = []  # wire-form labels; index == label_id
        self.model_version = -1
        self.model_bytes: bytes | None = None
        self.trial = 0
        self.accepted = 0
        self.positions = start.positions.copy()
        self.cell = np.asarray(start.cell.array).copy()
        self.e_chain: float | None = None
        self.pipeline: list[Proposal] = []  # trials in flight, in chain order
        self.acceptance = AcceptanceEstimate()
        self.chain_label_ids: list[int] = []  # bootstrap and chain-trial labels (not speculative ones)
        self.train_task: Task | None = None
        self.labels_since_fit = 0
        self.bootstrap_pending: dict[int, Task] = {}
        self.bootstrap_results: dict[int, dict] = {}
        self.progress_enabled = progress
        self.bar: tqdm | None = None
        self.t_start = time.monotonic()
        self.initial_model: InitialModel | None = None
        if resume:
            self._restore(self.files.checkpoint)
        elif config.initial_model_path is not None:
            self.initial_model = load_initial_model(config.initial_model_path, set(start.numbers.tolist()))
            for key, (ours, theirs) in potential_overrides(config, self.initial_model).items():
                log.warning("%s = %s in the config, %s in the initial model %s: the model's is used (its form "
                            "is that of every model of this run)", key, ours, theirs, self.initial_model.path)

    # -- bookkeeping -----------------------------------------------------------------------------
    def _atoms(self, positions: np.ndarray, cell: np.ndarray | None = None) -> Atoms:
        a = self.template.copy()
        a.positions = positions
        if cell is not None:
            a.cell = cell
        return a

    def _add_label(self, atoms: Atoms, energy: float, forces: np.ndarray, info: dict) -> int:
        label_id = len(self.labels)
        if info["source"] != "speculative":
            self.chain_label_ids.append(label_id)
        # the trainer gets the label exactly as dataset.extxyz holds it (8 decimals), so that a
        # resumed run, which can only read the file, trains on the very same numbers
        stored = self.files.write_label(atoms, energy, forces, {"label_id": label_id, **info})
        self.labels.append(wire_label(stored))
        # the trainer gets new labels in chunks, and all it lacks just before each train task
        for worker in list(self.broker.workers.values()):
            if worker.role == "trainer" and len(self.labels) - worker.state.get("labels_sent", 0) >= LABEL_CHUNK:
                self._sync_labels(worker)
        return label_id

    def _sync_labels(self, worker: Worker) -> None:
        sent = worker.state.get("labels_sent", 0)
        while sent < len(self.labels):
            chunk = self.labels[sent : sent + LABEL_CHUNK]
            if not self.broker.send(worker, "labels", labels=chunk):
                return
            sent += len(chunk)
            worker.state["labels_sent"] = sent

    def _checkpoint(self) -> None:
        train = self.train_task.context if self.train_task else None
        self.files.save_checkpoint({
            "trial": self.trial,
            "accepted": self.accepted,
            "positions": self.positions.tolist(),
            "cell": self.cell.tolist(),
            "e_chain": self.e_chain,
            "model_version": self.model_version,
            "labels_since_fit": self.labels_since_fit,
            "n_labels": len(self.labels),
            "pending_train": train,
        })

    def _restore(self, ckpt: dict) -> None:
        frames = self.files.read_dataset()
        self.labels = [wire_label(frame) for frame in frames]
        self.chain_label_ids = [k for k, f in enumerate(frames) if f.info.get("source") != "speculative"]
        if len(self.labels) != ckpt["n_labels"]:
            raise RunAborted(f"dataset has {len(self.labels)} labels, checkpoint says {ckpt['n_labels']}")
        self.trial, self.accepted = ckpt["trial"], ckpt["accepted"]
        self.positions = np.array(ckpt["positions"], dtype=np.float64)
        self.cell = np.array(ckpt["cell"], dtype=np.float64)
        self.e_chain = ckpt["e_chain"]
        self.model_version = ckpt["model_version"]
        self.model_bytes = self.files.model_path(self.model_version).read_bytes()
        self.labels_since_fit = ckpt["labels_since_fit"]
        if ckpt.get("pending_train") and self.trial < self.cfg.hmc.trials:  # else no trial would use it
            self._request_fit(**ckpt["pending_train"])
        log.info("resumed at trial %d with model %d and %d labels", self.trial, self.model_version,
                 len(self.labels))

    # -- requests --------------------------------------------------------------------------------
    def _request_label(self, atoms: Atoms, context: dict) -> Task:
        return self.broker.submit("dft", "label_task", structure_fields(atoms), context=context,
                                  timeout_s=self.cfg.reference.timeout)

    def _request_fit(self, version: int, label_ids: list[int], warm_start: bool) -> None:
        def prepare(worker: Worker, fields: dict) -> dict:
            self._sync_labels(worker)  # a new trainer gets the whole dataset before the task
            return fields

        fields = {"version": version, "label_ids": np.asarray(label_ids, dtype=np.int64), "warm_start": warm_start,
                  "model": self.model_bytes if warm_start else None}
        context = {"version": version, "label_ids": list(label_ids), "warm_start": warm_start}
        self.train_task = self.broker.submit("trainer", "train_task", fields, context=context, prepare=prepare)
        log.info("refit requested: model %d on %d labels", version, len(label_ids))

    def _training_label_ids(self) -> list[int]:
        # speculative labels train only when the chain need not be reproducible: their number
        # depends on how many DFT workers there are
        return list(self.chain_label_ids) if self.cfg.hmc.deterministic else list(range(len(self.labels)))

    def _next_trajectory(self) -> int:
        """Index of the first trial whose trajectory has not been started."""
        return self.pipeline[-1].trial + 1 if self.pipeline else self.trial

    def _maybe_refit(self) -> None:
        interval, stop_after = self.cfg.training.interval, self.cfg.training.stop_after
        if interval <= 0 or self.train_task is not None or self.labels_since_fit < interval:
            return
        if stop_after and self.trial >= stop_after:
            return
        if self._next_trajectory() >= self.cfg.hmc.trials:
            # no trial is left to use the model (labels_since_fit stays due: should a pre-fetched
            # trial be dropped and restarted, or hmc.trials be raised on resume, it is asked for then)
            return
        self.labels_since_fit = 0
        self._request_fit(self.model_version + 1, self._training_label_ids(), warm_start=True)

    def _speculation_limit(self) -> int:
        """First trial index whose trajectory may not be started yet (deterministic mode: it needs
        a model that is being fitted, or will be after the trial before it)."""
        if not self.cfg.hmc.deterministic:
            return self.cfg.hmc.trials
        if self.train_task is not None:
            return self.trial
        interval, stop_after = self.cfg.training.interval, self.cfg.training.stop_after
        if interval <= 0:
            return self.cfg.hmc.trials
        boundary = self.trial + max(interval - self.labels_since_fit, 0)
        if stop_after and boundary >= stop_after:
            return self.cfg.hmc.trials
        return boundary

    def _fill_pipeline(self) -> None:
        """Start trajectories until every DFT worker has a proposal (one, without pre-fetching)."""
        if self.model_bytes is None or self.e_chain is None:
            return
        depth = max(1, self.broker.count("dft")) if self.cfg.workers.prefetch else 1
        limit = min(self.cfg.hmc.trials, self._speculation_limit())
        while len(self.pipeline) < depth:
            t = self.pipeline[-1].trial + 1 if self.pipeline else self.trial
            if t >= limit:
                return
            if self.pipeline:
                prev = self.pipeline[-1]
                path = self.cfg.workers.prefetch_path
                assume_accept = self.acceptance.assume_accept() if path == "auto" else path == "accept"
                if assume_accept and prev.md is None:
                    return  # its end point, our start, is still being integrated
                start = prev.md["positions"] if assume_accept else prev.start
            else:
                assume_accept, start = None, self.positions
            self._start_trajectory(Proposal(t, start, assume_accept, chain.draw(self.cfg.hmc.seed, t, self.masses,
                                                                                self.temperature), self.model_version))

    def _start_trajectory(self, p: Proposal) -> None:
        fields = {
            **structure_fields(self._atoms(p.start, self.cell)),
            "masses": self.masses,
            "momenta": p.draws.momenta,
            "steps": self.cfg.hmc.md_steps,
            "timestep_fs": self.cfg.hmc.timestep,
            "model_version": p.model_version,
        }
        version, model = self.model_version, self.model_bytes

        def attach_model(worker: Worker, f: dict) -> dict:
            if worker.state.get("model_version") != version:
                f["model"] = model
                worker.state["model_version"] = version
            return f

        self.pipeline.append(p)
        p.tasks.append(self.broker.submit("mlmd", "md_task", fields, context={"stage": "md", "proposal": p},
                                          prepare=attach_model))

    def _drop_pipeline_from(self, index: int) -> None:
        """An outcome contradicted the assumption of pipeline[index]: it and all after it leave the
        chain. Queued tasks are cancelled; running ones finish and their labels are kept as
        speculative."""
        for p in self.pipeline[index:]:
            p.dead = True
            for task in p.tasks:
                self.broker.cancel_queued(task)
        del self.pipeline[index:]

    # -- events ----------------------------------------------------------------------------------
    def _on_completed(self, task: Task, msg: dict) -> None:
        ctx = task.context
        if task.kind == "train_task":
            self._on_model(msg, ctx)
        elif ctx["stage"] == "bootstrap":
            self._check_forces(msg)
            self.bootstrap_results[ctx["index"]] = msg
            self.bootstrap_pending.pop(ctx["index"])
            if not self.bootstrap_pending:
                self._finish_bootstrap()
        elif ctx["stage"] == "md":
            p: Proposal = ctx["proposal"]
            if msg["positions"].shape != (self.n_atoms, 3) or msg["model_version"] != p.model_version:
                raise RunAborted(f"mlmd result for trial {p.trial} does not match its task")
            p.md = msg
            if not p.dead:  # a dropped proposal's end point is not worth a reference call
                p.tasks.append(self._request_label(self._atoms(msg["positions"], self.cell),
                                                   {"stage": "label", "proposal": p}))
        elif ctx["stage"] == "label":
            self._check_forces(msg)
            p = ctx["proposal"]
            p.label = msg
            if p.dead:
                self._add_label(self._atoms(p.md["positions"], self.cell), msg["energy"], msg["forces"],
                                {"source": "speculative", "trial": p.trial})
                if not self.cfg.hmc.deterministic:
                    self.labels_since_fit += 1
            else:
                self._consume()

    def _consume(self) -> None:
        """Finish trials in chain order while their labels are in."""
        while self.pipeline and self.pipeline[0].label is not None:
            record = self._advance_chain(self.pipeline.pop(0))
            if self.pipeline and self.pipeline[0].assumes_accept != record["accepted"]:
                self._drop_pipeline_from(0)
            self._maybe_refit()  # after the drop: the trials it frees can use the new model
            self._fill_pipeline()  # the ML-MD worker starts while the outputs are written
            self._record_trial(record)

    def _check_forces(self, msg: dict) -> None:
        if msg["forces"].shape != (self.n_atoms, 3):
            raise RunAborted(f"reference forces of shape {msg['forces'].shape}, expected ({self.n_atoms}, 3)")

    def _finish_bootstrap(self) -> None:
        n = len(self.bootstrap_results)
        for index in range(n):
            msg = self.bootstrap_results[index]
            atoms = self._bootstrap[index]
            self._add_label(atoms, msg["energy"], msg["forces"], {"source": "start" if index == 0 else "bootstrap"})
        self.e_chain = self.bootstrap_results[0]["energy"]
        self.bootstrap_results.clear()
        if self.initial_model is None:
            self._request_fit(0, list(self.chain_label_ids), warm_start=False)
        else:
            self._adopt_initial_model(self.initial_model)

    def _adopt_initial_model(self, model: InitialModel) -> None:
        """potential.initial_model is model 0, byte for byte; refits warm-start from it."""
        self.files.save_model(0, model.data, {"initial_model": {"path": str(model.path.resolve()),
                                                                "sha256": model.sha256, "info": model.info}})
        self.model_version, self.model_bytes = 0, model.data
        log.info("model 0: the initial model %s (elements %s, hidden %s, cutoff %s Å)", model.path,
                 model.elements, model.hyperparameters["hidden"], model.hyperparameters["descriptor"]["cutoff"])
        self._checkpoint()

    def _add_initial_labels(self) -> None:
        """training.initial_dataset: the first labels of a new run, in file and frame order."""
        frames = read_initial_dataset(self.cfg, set(self.template.numbers.tolist()))
        for f in frames:
            self._add_label(f.atoms, f.energy, f.forces, {"source": "initial", "file": f.file, "frame": f.index})
        if frames:
            log.info("initial dataset: %d labels from %d file(s)", len(frames), len(self.cfg.training.initial_dataset))

    def _advance_chain(self, p: Proposal) -> dict:
        """The Metropolis step of trial ``p.trial``: label it, accept or reject, move the chain.
        Returns the trial's record (written by _record_trial)."""
        t, draws, md, msg = p.trial, p.draws, p.md, p.label
        if t != self.trial or not np.array_equal(p.start, self.positions):
            raise RunAborted(f"internal error: proposal for trial {t} does not start from the chain state")
        k_old = chain.kinetic_energy(draws.momenta, self.masses)
        k_new = chain.kinetic_energy(md["momenta"], self.masses)
        dh = chain.delta_h(k_old, self.e_chain, k_new, msg["energy"])
        accepted = chain.accept(dh, self.temperature, draws.uniform)
        proposal = self._atoms(md["positions"], self.cell)
        label_id = self._add_label(proposal, msg["energy"], msg["forces"], {"source": "trial", "trial": t})
        e_old = self.e_chain
        if accepted:
            self.positions, self.e_chain = md["positions"], msg["energy"]
            self.accepted += 1
        self.trial += 1
        self.acceptance.add(accepted)
        self.labels_since_fit += 1
        return {
            "trial": t,
            "accepted": accepted,
            "delta_h": dh,
            "e_ref": msg["energy"],
            "e_ml": md["e_ml_end"],
            "e_chain": self.e_chain,
            "model": md["model_version"],
            "e_ref_old": e_old,
            "e_ml_start": md["e_ml_start"],
            "h_ml_drift": md["h_ml_drift"],
            "k_old": k_old,
            "k_new": k_new,
            "n_atoms": self.n_atoms,
            "label_id": label_id,
            "mlmd_seconds": md["seconds"],
            "dft_seconds": msg["seconds"],
            "wall_seconds": round(time.monotonic() - self.t_start, 3),
        }

    def _record_trial(self, record: dict) -> None:
        """Outputs and checkpoint of a finished trial (after the next trajectories are under way)."""
        self.files.write_trial(record)
        t = record["trial"]
        if (t + 1) % self.cfg.output.stride == 0:
            self.files.write_chain(self._atoms(self.positions, self.cell), self.e_chain,
                                   {"trial": t, "accepted": record["accepted"], "model": record["model"]})
        self._checkpoint()
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(acc=f"{self.accepted / self.trial:.2f}", model=self.model_version)

    def _on_model(self, msg: dict, ctx: dict) -> None:
        if msg["version"] != ctx["version"]:
            raise RunAborted(f"trainer answered model {msg['version']} for request {ctx['version']}")
        model_from_bytes(msg["model"])  # refuse a model that does not load here (no pickle involved)
        self.files.save_model(msg["version"], msg["model"], msg["metrics"])
        self.model_version, self.model_bytes = msg["version"], msg["model"]
        self.train_task = None
        val = msg["metrics"].get("validation", {})
        log.info("model %d: validation energy RMSE %s meV/atom, force RMSE %s meV/Å, %s s", msg["version"],
                 _fmt(val.get("energy_rmse_mev_per_atom")), _fmt(val.get("force_rmse_mev_per_A")),
                 msg["metrics"].get("seconds"))
        if self.model_version > 0 and self.trial < self.cfg.hmc.trials:
            self._maybe_refit()
        self._checkpoint()

    def _on_failed(self, task: Task, error: str) -> None:
        proposal = task.context.get("proposal") if isinstance(task.context, dict) else None
        if proposal is not None and proposal.dead:
            log.warning("task %d for a dropped speculative trial failed (%s); not retried", task.task_id, error)
            return
        log.error("task %d (%s) failed on attempt %d: %s", task.task_id, task.kind, task.attempts, error)
        retries = self.cfg.reference.retries if task.role == "dft" else 1
        if task.attempts <= retries:
            self.broker.retry(task)
            return
        if task.kind == "train_task" and self.model_version >= 0:
            log.error("giving up on refit %d; the chain goes on with model %d", task.context["version"],
                      self.model_version)
            self.train_task = None
            return
        raise RunAborted(f"{task.kind} failed {task.attempts} times; last error: {error}")

    # -- main loop -------------------------------------------------------------------------------
    def _dispatch_events(self, timeout_s: float) -> None:
        for event in self.broker.poll(timeout_s):
            if isinstance(event, Completed):
                self._on_completed(event.task, event.message)
            elif isinstance(event, Failed):
                self._on_failed(event.task, event.error)
            elif isinstance(event, Joined):
                if event.worker.role == "trainer":
                    self._sync_labels(event.worker)
            elif isinstance(event, Lost):
                log.warning("lost worker %s (%s)%s", event.worker.worker_id, event.worker.name,
                            f"; its task {event.task.task_id} is re-queued" if event.task else "")

    def run(self) -> int:
        """Run to ``hmc.trials`` trials; 0 on success, 2 when the run had to stop."""
        cfg = self.cfg
        self.bar = tqdm(total=cfg.hmc.trials, initial=self.trial, desc="SLHMC", unit="trial",
                        disable=not self.progress_enabled, dynamic_ncols=True)
        log.info("server on %s; %d trials of %d x %.3g fs at %.1f K", self.endpoint, cfg.hmc.trials,
                 cfg.hmc.md_steps, cfg.hmc.timestep, self.temperature)
        try:
            if self.model_bytes is None:
                self._add_initial_labels()
                start = self._atoms(self.positions, self.cell)
                self._bootstrap = [start] + bootstrap_structures(
                    start, cfg.training.bootstrap, cfg.training.bootstrap_displacement,
                    cfg.training.bootstrap_strain, cfg.hmc.seed)
                for index, atoms in enumerate(self._bootstrap):
                    self.bootstrap_pending[index] = self._request_label(atoms, {"stage": "bootstrap", "index": index})
                log.info("bootstrap: labelling %d structures", len(self._bootstrap))
            elif self.trial < cfg.hmc.trials:
                self._maybe_refit()  # one due when the run stopped (hmc.trials may have been raised)
            last_report = time.monotonic()
            while self.trial < cfg.hmc.trials:
                self._fill_pipeline()
                self._dispatch_events(0.1)
                if not self.progress_enabled and time.monotonic() - last_report > 30:
                    last_report = time.monotonic()
                    log.info("trial %d/%d, acceptance %.3f, model %d", self.trial, cfg.hmc.trials,
                             self.accepted / max(self.trial, 1), self.model_version)
            if self.train_task is not None:  # not waited for: no trial is left to use its model
                pending = self.train_task.context
                log.info("refit %d on %d labels abandoned: no trial is left to use it", pending["version"],
                         len(pending["label_ids"]))
            log.info("done: %d trials, acceptance %.3f, %d labels, last model %d, %.1f s", self.trial,
                     self.accepted / max(self.trial, 1), len(self.labels), self.model_version,
                     time.monotonic() - self.t_start)
            return 0
        except RunAborted as err:
            log.error("run stopped: %s", err)
            return 2
        finally:
            self.bar.close()
            self.broker.close()
            self.files.close()


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3g}"
