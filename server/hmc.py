"""The HMC server: one Markov chain driven through the broker — an event loop over named parts.

Phases: bootstrap (label the start structure and perturbed, strained copies; fit model 0), then
trials. One trial t (the algorithm is :mod:`slhmc.hmc`'s):

  momenta from the (seed, t) stream -> an mlmd worker integrates L velocity-Verlet steps with the
  ML forces of one model version -> a dft worker labels the end point -> the Metropolis test with
  the exact ΔH, reference energies at both ends.

The parts, each in its own module:

- the chain (:class:`slhmc.hmc.ChainState`): state, the Metropolis step, checkpoint fields;
- the pipeline (:mod:`.prefetch`): with several DFT workers and ``workers.prefetch``, up to one
  proposal per DFT worker in flight along the most probable accept/reject path, consumed in chain
  order, so that the chain is the one a single worker would produce;
- the refit policy (:mod:`.refit`): when the next refit is due, in free and deterministic mode;
- the label store (:mod:`.labels`): dataset.extxyz and the labels each trainer holds;
- the bootstrap (:mod:`.bootstrap`), and the run directory (:mod:`.outputs`).

NPT (``system.pressure`` set): a trial is, with probability ``hmc.volume_probability`` drawn from
its stream, a cell trial — the mlmd worker runs an inner chain of Metropolis cell steps with the ML
energy, a dft worker labels its end point (when it moved), and the self-learning correction
exp(-β[(E_ref - E_ML)' - (E_ref - E_ML)]) accepts it (:mod:`slhmc.hmc.npt`); every other trial is
a fixed-cell HMC trial in the chain's present cell. Proposals carry their start cell.

Tasks carry typed contexts (:mod:`.tasks`); the server keeps its own record of what each worker
holds (model version, labels). A failed reference call is retried and then stops the run: it is
never turned into a rejection. A refit still running after the last trial is not waited for (the
checkpoint keeps it: a --resume with more hmc.trials requests it again).

``training.initial_dataset`` frames are the first labels of a new run (``source=initial``),
before the bootstrap; ``potential.initial_model`` is model 0 as it is, instead of a fit
(slhmc.initial).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.io import read
from tqdm import tqdm

from slhmc import hmc
from slhmc.config import ADAPT_BLOCK, Config
from slhmc.initial import InitialModel, load_initial_model, potential_overrides, read_initial_dataset
from slhmc.potential.serialization import model_from_bytes
from slhmc.potential.training import describe_errors
from slhmc.protocol import structure_fields

from .bootstrap import Bootstrap, bootstrap_structures
from .broker import Broker, Completed, Failed, Joined, Lost, Prepared, Task, Worker
from .labels import LABEL_CHUNK, LabelStore
from .outputs import RunFiles
from .prefetch import Pipeline, Proposal
from .refit import RefitPolicy
from .tasks import BootstrapLabel, ProposalLabel, ProposalMD, Refit

log = logging.getLogger(__name__)


class RunAborted(RuntimeError):
    pass


# the "label" of a cell trial whose inner chain did not move: its end point is its start, whose
# reference energy the chain holds, so no reference call is made
UNMOVED = {"energy": None, "forces": None, "stress": None, "seconds": 0.0}


@dataclass
class Peer:
    """What the server knows a connected worker holds."""

    model_version: int | None = None  # mlmd: the model it was last sent
    labels_sent: int = 0  # trainer: it holds labels 0 .. labels_sent-1


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
        if config.npt and config.hmc.cell == hmc.npt.ANISOTROPIC:
            start = hmc.standard_cell(start)  # the anisotropic moves' lower-triangular cell (a rotation)
        self.template = Atoms(start.numbers, start.positions, cell=start.cell, pbc=start.pbc)
        self.masses = start.get_masses()
        self.n_atoms = len(start)
        self.temperature = config.system.temperature
        self.broker = Broker(bind, config.model_dump(mode="json"), heartbeat_s=config.workers.heartbeat,
                             timeout_s=config.workers.timeout, socket_setup=socket_setup)
        self.endpoint = self.broker.endpoint
        self.chain = hmc.ChainState(0, 0, start.positions.copy(), np.asarray(start.cell.array).copy(), None)
        self.pipeline = Pipeline(config.workers.prefetch_path)
        self.pressure = hmc.pressure_eV_per_A3(config.system.pressure) if config.npt else None  # eV/Å³
        self.volume_step = hmc.VolumeStep(config.hmc.volume_step, config.hmc.volume_adapt_until, ADAPT_BLOCK)
        self.refits = RefitPolicy(config.training, config.hmc.trials, config.hmc.deterministic)
        self.store = LabelStore(self.files)
        self.bootstrap: Bootstrap | None = None
        self.peers: dict[str, Peer] = {}  # by worker id
        self.model_version = -1
        self.model_bytes: bytes | None = None
        self.progress_enabled = progress
        self.bar: tqdm | None = None
        self.t_start = time.monotonic()
        self.initial_model: InitialModel | None = None
        if resume:
            try:
                self._restore(self.files.checkpoint)
            except Exception:
                self.broker.close("resume failed")
                self.files.close()
                raise
        elif config.initial_model_path is not None:
            self.initial_model = load_initial_model(config.initial_model_path, set(start.numbers.tolist()))
            for key, (ours, theirs) in potential_overrides(config, self.initial_model).items():
                log.warning("%s = %s in the config, %s in the initial model %s: the model's is used (its form "
                            "is that of every model of this run)", key, ours, theirs, self.initial_model.path)

    # -- bookkeeping -----------------------------------------------------------------------------
    def _atoms(self, positions: np.ndarray, cell: np.ndarray | None = None) -> Atoms:
        """The run's atoms at ``positions`` in ``cell`` (default: the chain's present cell)."""
        a = self.template.copy()
        a.cell = self.chain.cell if cell is None else cell
        a.positions = positions
        return a

    def _peer(self, worker: Worker) -> Peer:
        return self.peers.setdefault(worker.worker_id, Peer())

    def _add_label(self, atoms: Atoms, msg: dict, info: dict) -> int:
        """A reference result ``msg`` (energy, forces, stress where given) of ``atoms`` as a label."""
        label_id = self.store.add(atoms, msg["energy"], msg["forces"], info, msg.get("stress"))
        # trainers get new labels in chunks as they come, and all they lack just before a train task
        for worker in self.broker.workers.values():
            if worker.role == "trainer":
                self._send_labels(worker, minimum=LABEL_CHUNK)
        return label_id

    def _send_labels(self, worker: Worker, minimum: int = 1) -> None:
        peer = self._peer(worker)
        for held, chunk in self.store.chunks_after(peer.labels_sent, minimum):
            if not self.broker.send(worker, "labels", labels=chunk):
                return
            peer.labels_sent = held

    def _checkpoint(self) -> None:
        refit = self.refits.in_flight
        self.files.save_checkpoint({
            **self.chain.checkpoint_fields(),
            "model_version": self.model_version,
            "labels_since_fit": self.refits.labels_since_fit,
            "n_labels": len(self.store),
            "pending_train": refit.checkpoint_fields() if refit else None,
            "volume_step": self.volume_step.checkpoint_fields() if self.cfg.npt else None,
        })

    def _restore(self, ckpt: dict) -> None:
        self.store.restore()
        if len(self.store) != ckpt["n_labels"]:
            raise RunAborted(f"cannot resume: {self.files.dir}/dataset.extxyz has {len(self.store)} labels, the "
                             f"checkpoint says {ckpt['n_labels']}")
        self.chain = hmc.ChainState.from_checkpoint(ckpt)
        self.model_version = ckpt["model_version"]
        path = self.files.model_path(self.model_version)
        if not path.exists():
            raise RunAborted(f"cannot resume: the checkpoint's model {self.model_version} ({path}) is missing")
        self.model_bytes = path.read_bytes()
        self.refits.labels_since_fit = ckpt["labels_since_fit"]
        if self.cfg.npt:
            self.volume_step.restore(ckpt["volume_step"])
        if ckpt.get("pending_train") and self.chain.trial < self.cfg.hmc.trials:  # else no trial would use it
            self._request_fit(Refit(**ckpt["pending_train"]))
        log.info("resumed at trial %d with model %d and %d labels", self.chain.trial, self.model_version,
                 len(self.store))

    # -- requests --------------------------------------------------------------------------------
    def _request_label(self, atoms: Atoms, context: BootstrapLabel | ProposalLabel) -> Task:
        return self.broker.submit("dft", "label_task", {**structure_fields(atoms), "stress": self.cfg.npt},
                                  context=context, timeout_s=self.cfg.reference.timeout)

    def _request_fit(self, refit: Refit) -> None:
        def prepare(worker: Worker, fields: dict) -> Prepared:
            # a trainer gets every label it lacks before the task (a new one: the whole dataset)
            peer = self._peer(worker)
            first = [("labels", {"labels": chunk}) for _, chunk in self.store.chunks_after(peer.labels_sent)]
            peer.labels_sent = len(self.store)
            return fields, first

        fields = {"version": refit.version, "label_ids": np.asarray(refit.label_ids, dtype=np.int64),
                  "warm_start": refit.warm_start, "model": self.model_bytes if refit.warm_start else None,
                  **self.cfg.train_task_fields()}
        self.broker.submit("trainer", "train_task", fields, context=refit, prepare=prepare)
        self.refits.start(refit)
        log.info("refit requested: model %d on %d labels", refit.version, len(refit.label_ids))

    def _maybe_refit(self) -> None:
        if self.refits.take_due(self.chain.trial, self.pipeline.next_trial(self.chain.trial)):
            ids = self.store.training_ids(self.cfg.hmc.deterministic)
            self._request_fit(Refit(self.model_version + 1, ids, warm_start=True))

    def _fill_pipeline(self) -> None:
        """Start trajectories until every DFT worker has a proposal (one, without pre-fetching)."""
        if self.model_bytes is None or self.chain.energy is None:
            return
        depth = max(1, self.broker.count("dft")) if self.cfg.workers.prefetch else 1
        if self.cfg.npt:  # the adapted volume step of a trial needs the chain within one block of it
            depth = min(depth, ADAPT_BLOCK)
        limit = min(self.cfg.hmc.trials, self.refits.speculation_limit(self.chain.trial))
        while len(self.pipeline) < depth:
            t = self.pipeline.next_trial(self.chain.trial)
            start = self.pipeline.next_start(self.chain.positions, self.chain.cell) if t < limit else None
            if start is None:
                return
            assume_accept, positions, cell = start
            h, cell_trial = self.cfg.hmc, None
            if self.cfg.npt:
                npt_draws = hmc.npt_draw(h.seed, t, self.masses, self.temperature, h.volume_probability,
                                         h.volume_inner_steps, h.cell, self.volume_step.for_trial(t))
                draws, cell_trial = npt_draws.hmc, npt_draws if npt_draws.cell_trial else None
            else:
                draws = hmc.draw(h.seed, t, self.masses, self.temperature)
            self._start_trajectory(Proposal(t, positions, assume_accept, draws, self.model_version, cell, cell_trial))

    def _start_trajectory(self, p: Proposal) -> None:
        fields = {
            **structure_fields(self._atoms(p.start, p.start_cell)),
            "masses": self.masses,
            "momenta": p.draws.momenta,
            "steps": self.cfg.hmc.md_steps,
            "timestep_fs": self.cfg.hmc.timestep,
            "model_version": p.model_version,
        }
        if p.cell_trial is not None:
            fields["cell_chain"] = {"mode": self.cfg.hmc.cell, "steps": p.cell_trial.cell.steps,
                                    "uniforms": p.cell_trial.cell.uniforms, "temperature_K": self.temperature,
                                    "pressure_eV_per_A3": self.pressure}
        version, model = self.model_version, self.model_bytes

        def attach_model(worker: Worker, f: dict) -> Prepared:
            peer = self._peer(worker)
            if peer.model_version != version:
                f["model"] = model
                peer.model_version = version
            return f, []

        self.pipeline.append(p)
        p.tasks.append(self.broker.submit("mlmd", "md_task", fields, context=ProposalMD(p), prepare=attach_model))

    # -- events ----------------------------------------------------------------------------------
    def _on_completed(self, task: Task, msg: dict) -> None:
        match task.context:
            case Refit() as refit:
                self._on_model(msg, refit)
            case BootstrapLabel(index=index):
                self._check_forces(msg)
                if self.bootstrap.add(index, msg):
                    self._finish_bootstrap()
            case ProposalMD(proposal=p):
                if (msg["positions"].shape != (self.n_atoms, 3) or msg["model_version"] != p.model_version
                        or (p.cell_trial is not None) != (msg.get("cell") is not None)):
                    raise RunAborted(f"mlmd result for trial {p.trial} does not match its task")
                p.md = msg
                if p.cell_trial is not None and msg["cell_steps_accepted"] == 0:
                    p.label = UNMOVED  # the proposal is the start itself: nothing to label
                    if not p.dead:
                        self._consume()
                elif not p.dead:  # a dropped proposal's end point is not worth a reference call
                    p.tasks.append(self._request_label(self._atoms(msg["positions"], p.end_cell),
                                                       ProposalLabel(p)))
            case ProposalLabel(proposal=p):
                self._check_forces(msg)
                p.label = msg
                if p.dead:
                    self._add_label(self._atoms(p.md["positions"], p.end_cell), msg,
                                    {"source": "speculative", "trial": p.trial})
                    self.refits.count_label(chain=False)
                else:
                    self._consume()

    def _consume(self) -> None:
        """Finish trials in chain order while their labels are in."""
        while (p := self.pipeline.pop_ready()) is not None:
            record = self._advance_chain(p)
            for dropped in self.pipeline.settle(record["accepted"], same_either_way=p.label is UNMOVED):
                for t in dropped.tasks:
                    self.broker.cancel_queued(t)
            self._maybe_refit()  # after the drop: the trials it frees can use the new model
            self._fill_pipeline()  # the ML-MD worker starts while the outputs are written
            self._record_trial(record)

    def _check_forces(self, msg: dict) -> None:
        if msg["forces"].shape != (self.n_atoms, 3):
            raise RunAborted(f"reference forces of shape {msg['forces'].shape}, expected ({self.n_atoms}, 3)")

    def _start_bootstrap(self) -> None:
        self._add_initial_labels()
        cfg = self.cfg
        start = self._atoms(self.chain.positions)
        self.bootstrap = Bootstrap([start] + bootstrap_structures(
            start, cfg.training.bootstrap, cfg.training.bootstrap_displacement, cfg.training.bootstrap_strain,
            cfg.hmc.seed))
        for index, atoms in enumerate(self.bootstrap.structures):
            self._request_label(atoms, BootstrapLabel(index))
        log.info("bootstrap: labelling %d structures", len(self.bootstrap.structures))

    def _finish_bootstrap(self) -> None:
        for index, (atoms, msg) in enumerate(self.bootstrap.labelled()):
            self._add_label(atoms, msg, {"source": "start" if index == 0 else "bootstrap"})
        self.chain.energy = self.bootstrap.results[0]["energy"]
        self.bootstrap = None
        if self.initial_model is None:
            self._request_fit(Refit(0, list(self.store.chain_ids), warm_start=False))
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
            self._add_label(f.atoms, {"energy": f.energy, "forces": f.forces, "stress": f.stress},
                            {"source": "initial", "file": f.file, "frame": f.index})
        if frames:
            log.info("initial dataset: %d labels from %d file(s)", len(frames), len(self.cfg.training.initial_dataset))

    def _advance_chain(self, p: Proposal) -> dict:
        """The Metropolis step of trial ``p.trial``: label it, accept or reject, move the chain.
        Returns the trial's record (written by _record_trial)."""
        t, md, msg = p.trial, p.md, p.label
        if (t != self.chain.trial or not np.array_equal(p.start, self.chain.positions)
                or not np.array_equal(p.start_cell, self.chain.cell)):
            raise RunAborted(f"internal error: proposal for trial {t} does not start from the chain state")
        label_id = None
        if msg is not UNMOVED:
            label_id = self._add_label(self._atoms(md["positions"], p.end_cell), msg,
                                       {"source": "trial", "trial": t})
            self.refits.count_label(chain=True)
        common = {"trial": t, "e_ref": msg["energy"], "e_ml": md["e_ml_end"], "model": md["model_version"],
                  "e_ml_start": md["e_ml_start"]}
        if p.cell_trial is None:
            step = hmc.metropolis_step(self.chain, p.draws, md["positions"], md["momenta"], msg["energy"],
                                       self.masses, self.temperature)
            record = {**common, "accepted": step.accepted, "delta_h": step.delta_h, "e_chain": self.chain.energy,
                      "e_ref_old": step.e_old, "h_ml_drift": md["h_ml_drift"], "k_old": step.k_old,
                      "k_new": step.k_new}
        else:
            inner = hmc.InnerChain(md["positions"], md["cell"], md["e_ml_end"], md["cell_steps_accepted"])
            cell = hmc.cell_step(self.chain, inner, msg["energy"], md["e_ml_start"], self.temperature,
                                 p.draws.uniform)
            steps = len(p.cell_trial.cell.uniforms)
            self.volume_step.record(t, md["cell_steps_accepted"], steps)
            record = {**common, "accepted": cell.accepted, "delta_h": None, "e_chain": self.chain.energy,
                      "e_ref_old": cell.e_old, "h_ml_drift": None, "k_old": None, "k_new": None,
                      "volume_proposed": cell.volume_new, "cell_steps": steps,
                      "cell_steps_accepted": md["cell_steps_accepted"],
                      "volume_step": self.volume_step.for_trial(t), "log_acceptance": cell.log_acceptance}
        if self.cfg.npt:
            record["kind"] = "position" if p.cell_trial is None else "cell"
            record["volume"] = hmc.volume(self.chain.cell)
            if self.cfg.hmc.cell == hmc.npt.ANISOTROPIC:
                record["cell"] = self.chain.cell.tolist()
        return {**record, "n_atoms": self.n_atoms, "label_id": label_id, "mlmd_seconds": md["seconds"],
                "dft_seconds": msg["seconds"], "wall_seconds": round(time.monotonic() - self.t_start, 3)}

    def _record_trial(self, record: dict) -> None:
        """Outputs and checkpoint of a finished trial (after the next trajectories are under way)."""
        self.files.write_trial(record)
        t = record["trial"]
        if (t + 1) % self.cfg.output.stride == 0:
            self.files.write_chain(self._atoms(self.chain.positions), self.chain.energy,
                                   {"trial": t, "accepted": record["accepted"], "model": record["model"]})
        self._checkpoint()
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(acc=f"{self.chain.accepted / self.chain.trial:.2f}", model=self.model_version)

    def _on_model(self, msg: dict, refit: Refit) -> None:
        if msg["version"] != refit.version:
            raise RunAborted(f"trainer answered model {msg['version']} for request {refit.version}")
        model_from_bytes(msg["model"])  # refuse a model that does not load here (no pickle involved)
        self.files.save_model(msg["version"], msg["model"], msg["metrics"])
        self.model_version, self.model_bytes = msg["version"], msg["model"]
        self.refits.finished()
        log.info("model %d: validation %s, %s s", msg["version"],
                 describe_errors(msg["metrics"].get("validation", {})), msg["metrics"].get("seconds"))
        if self.model_version > 0 and self.chain.trial < self.cfg.hmc.trials:
            self._maybe_refit()
        self._checkpoint()

    def _event(self, event: str, **fields: object) -> None:
        """One line of events.jsonl: what happened to the workers, for people and tests to read."""
        self.files.write_event({"event": event, "trial": self.chain.trial,
                                "wall_seconds": round(time.monotonic() - self.t_start, 3), **fields})

    def _on_failed(self, task: Task, error: str) -> None:
        if isinstance(task.context, ProposalMD | ProposalLabel) and task.context.proposal.dead:
            log.warning("task %d for a dropped speculative trial failed (%s); not retried", task.task_id, error)
            return
        log.error("task %d (%s) failed on attempt %d: %s", task.task_id, task.kind, task.attempts, error)
        retries = self.cfg.reference.retries if task.role == "dft" else 1
        if task.attempts <= retries:
            self.broker.retry(task)
            return
        if isinstance(task.context, Refit) and self.model_version >= 0:
            log.error("giving up on refit %d; the chain goes on with model %d", task.context.version,
                      self.model_version)
            self.refits.finished()
            return
        raise RunAborted(f"{task.kind} failed {task.attempts} times; last error: {error}")

    # -- main loop -------------------------------------------------------------------------------
    def _dispatch_events(self, timeout_s: float) -> None:
        for event in self.broker.poll(timeout_s):
            match event:
                case Completed(task=task, message=msg):
                    self._on_completed(task, msg)
                case Failed(task=task, error=error, reason=reason, worker=name):
                    self._event("task_failed", task_id=task.task_id, kind=task.kind, reason=reason, worker=name,
                                attempt=task.attempts, error=error[:500])
                    self._on_failed(task, error)
                case Joined(worker=worker):
                    self._event("joined", worker=worker.name, worker_id=worker.worker_id, role=worker.role)
                    self._peer(worker)
                    if worker.role == "trainer":
                        self._send_labels(worker)
                case Lost(worker=worker, task=task):
                    self._event("lost", worker=worker.name, worker_id=worker.worker_id, role=worker.role,
                                requeued_task=None if task is None else task.task_id,
                                requeued_kind=None if task is None else task.kind)
                    self.peers.pop(worker.worker_id, None)
                    log.warning("lost worker %s (%s)%s", worker.worker_id, worker.name,
                                f"; its task {task.task_id} is re-queued" if task else "")

    def run(self) -> int:
        """Run to ``hmc.trials`` trials; 0 on success, 2 when the run had to stop."""
        cfg = self.cfg
        self.bar = tqdm(total=cfg.hmc.trials, initial=self.chain.trial, desc="SLHMC", unit="trial",
                        disable=not self.progress_enabled, dynamic_ncols=True)
        log.info("server on %s; %d trials of %d x %.3g fs at %.1f K", self.endpoint, cfg.hmc.trials,
                 cfg.hmc.md_steps, cfg.hmc.timestep, self.temperature)
        reason = "interrupted"  # what the workers are told when the server ends
        try:
            if self.model_bytes is None:
                self._start_bootstrap()
            elif self.chain.trial < cfg.hmc.trials:
                self._maybe_refit()  # one due when the run stopped (hmc.trials may have been raised)
            last_report = time.monotonic()
            while self.chain.trial < cfg.hmc.trials:
                self._fill_pipeline()
                self._dispatch_events(0.1)
                if not self.progress_enabled and time.monotonic() - last_report > 30:
                    last_report = time.monotonic()
                    log.info("trial %d/%d, acceptance %.3f, model %d", self.chain.trial, cfg.hmc.trials,
                             self.chain.accepted / max(self.chain.trial, 1), self.model_version)
            if self.refits.in_flight is not None:  # not waited for: no trial is left to use its model
                pending = self.refits.in_flight
                log.info("refit %d on %d labels abandoned: no trial is left to use it", pending.version,
                         len(pending.label_ids))
            self._event("done", dropped_messages=self.broker.dropped,
                        refused_handshakes=self.broker.refused_handshakes)
            reason = "run finished"
            log.info("done: %d trials, acceptance %.3f, %d labels, last model %d, %.1f s", self.chain.trial,
                     self.chain.accepted / max(self.chain.trial, 1), len(self.store), self.model_version,
                     time.monotonic() - self.t_start)
            return 0
        except RunAborted as err:
            log.error("run stopped: %s", err)
            reason = f"run stopped: {err}"[:500]
            return 2
        finally:
            self.bar.close()
            self.broker.close(reason)
            self.files.close()
