"""``slhmc md``: production molecular dynamics with a trained potential, through ASE's integrators.

Each repeat equilibrates with Langevin at the target temperature (its own seed), then runs the
production ensemble: ``nve`` (velocity Verlet: the right dynamics for vibrational spectra) or
``nvt`` (Langevin). The centre of mass is at rest from the start and kept there (ASE's ``FixCom``
constraint, unless the structure brings constraints of its own), so the temperature written
counts 3N − 3 degrees of freedom. Every ``stride`` steps the frame (positions and momenta) goes to
``repeat_K/trajectory.extxyz`` and the energies to ``repeat_K/energies.csv``; ``md.json`` says
what was run, so that ``slhmc analyze DIR`` knows it is an MD directory.

Extrapolation: every MD step (equilibration included) is checked for atoms whose symmetry
functions leave the network's training range (slhmc.potential.network). Steps are numbered from
the start of production (step 0 = the first row of energies.csv); equilibration steps are
negative, the start structure is step ``-equilibrate``. The ``extrapolating_atoms`` column of
energies.csv is the largest number of such atoms at any step since the previous row (for the
first row: since the start of the repeat), so a flagged step between written rows is never lost;
it is empty when the model has no recorded range. The first flagged structure of each repeat is
written to ``repeat_K/extrapolation.extxyz`` (with per-atom ``extrapolating`` flags: the structure
to re-label with the reference first); the log and ``md.json`` (``extrapolation``) give the first
flagged step and the number of flagged steps per repeat. ``on_extrapolation="stop"`` ends a
repeat at its first flagged step: its energies.csv and trajectory.extxyz then end with that step
(even off the stride grid), and the next repeat starts.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.constraints import FixCom
from ase.data import chemical_symbols
from ase.io import read, write
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary, thermalize_momenta
from ase.md.verlet import VelocityVerlet
from tqdm import tqdm

from slhmc.potential import load_calculator
from slhmc.potential.calculator import BPNNCalculator
from slhmc.potential.network import EXTRAPOLATION_ABSOLUTE_MARGIN, EXTRAPOLATION_RELATIVE_MARGIN
from slhmc.rundir import ENERGIES, EXTRAPOLATION, MD_META, TRAJECTORY, repeat_dir
from slhmc.rundir import flagged_repeats as flagged_repeats  # md.json readers, re-exported for the CLI
from slhmc.rundir import stopped_repeats as stopped_repeats

log = logging.getLogger(__name__)

LANGEVIN_FRICTION_PER_FS = 0.01  # weak: 100-fs velocity memory
ON_EXTRAPOLATION = ("warn", "stop")
CSV_COLUMNS = ["step", "time_fs", "e_pot_eV", "e_kin_eV", "e_tot_eV", "temperature_K", "extrapolating_atoms"]


class ExtrapolationStop(Exception):
    """Raised from the MD observer at the first flagged step when on_extrapolation is "stop"."""

    def __init__(self, step: int) -> None:
        super().__init__(step)
        self.step = step


class ExtrapolationWatch:
    """Reads the calculator's extrapolation count after every MD step of one repeat."""

    def __init__(self, calc: BPNNCalculator, repeat: int, rep_dir: Path, timestep_fs: float, stop: bool) -> None:
        self.calc, self.repeat, self.rep_dir, self.timestep_fs, self.stop = calc, repeat, rep_dir, timestep_fs, stop
        self.last_step: int | None = None
        self.window_max: int | None = None  # most extrapolating atoms since the last energies.csv row
        self.first_step: int | None = None
        self.first_atoms = 0
        self.flagged_steps = 0
        self.checked_steps = 0
        self.max_atoms = 0

    def check(self, atoms: Atoms, step: int) -> None:
        """Called by ASE after every step (and once when an integrator starts: same step, skipped)."""
        if step == self.last_step:
            return
        self.last_step = step
        self.checked_steps += 1
        n = self.calc.results.get("extrapolating_atoms")
        if n is None:  # no recorded training range: nothing to check
            return
        self.window_max = max(self.window_max or 0, n)
        if not n:
            return
        self.flagged_steps += 1
        self.max_atoms = max(self.max_atoms, n)
        if self.first_step is None:
            self.first_step, self.first_atoms = step, n
            per_element = self.calc.results.get("extrapolating_per_element", {})
            phase = " (equilibration)" if step < 0 else ""
            log.warning("repeat %d: the network extrapolates at step %d%s, t = %.1f fs: %d of %d atoms (%s) have a "
                        "symmetry function outside the training range; structure in %s", self.repeat, step, phase,
                        step * self.timestep_fs, n, len(atoms),
                        ", ".join(f"{el} {c}" for el, c in per_element.items() if c),
                        self.rep_dir / EXTRAPOLATION)
            flagged = atoms.copy()
            flagged.info.update(step=step, time_fs=step * self.timestep_fs, extrapolating_atoms=n)
            flagged.arrays["extrapolating"] = self.calc.model.extrapolating_mask(
                atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc)
            write(self.rep_dir / EXTRAPOLATION, flagged, format="extxyz")
        if self.stop:
            raise ExtrapolationStop(step)

    def observe(self, atoms: Atoms, dyn, first_production_nsteps: int) -> None:
        """ASE observer (interval 1): the step number is the integrator's minus its production start."""
        self.check(atoms, dyn.nsteps - first_production_nsteps)

    def row_value(self) -> int | str:
        """The extrapolating_atoms cell of the next energies.csv row; resets the window."""
        value, self.window_max = self.window_max, None
        return "" if value is None else value

    def record(self, stopped: bool) -> dict:
        return {"repeat": self.repeat, "first_step": self.first_step,
                "first_time_fs": None if self.first_step is None else self.first_step * self.timestep_fs,
                "first_extrapolating_atoms": self.first_atoms if self.first_step is not None else None,
                "flagged_steps": self.flagged_steps, "checked_steps": self.checked_steps,
                "max_extrapolating_atoms": self.max_atoms, "stopped": stopped}


def _write_frame(table, traj_path: Path, atoms: Atoms, step: int, timestep_fs: float,
                 watch: ExtrapolationWatch) -> None:
    """One energies.csv row and one trajectory frame."""
    e_pot, e_kin = atoms.get_potential_energy(), atoms.get_kinetic_energy()
    table.writerow([step, step * timestep_fs, e_pot, e_kin, e_pot + e_kin, atoms.get_temperature(), watch.row_value()])
    write(traj_path, atoms, format="extxyz", append=True)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def _read_start(structure: str | Path) -> Atoms:
    """The start structure, or an error that names the file (FileNotFoundError, ValueError)."""
    if not Path(structure).is_file():
        raise FileNotFoundError(f"structure {structure} does not exist")
    try:
        return read(structure)
    except Exception as err:  # ase.io.read raises whatever its format's reader raises
        raise ValueError(f"ase.io.read cannot read structure {structure}: {err}") from None


def run_md(
    model: str,
    structure: str,
    temperature_K: float,
    steps: int,
    timestep_fs: float,
    out: str,
    ensemble: str = "nve",
    repeats: int = 1,
    equilibrate: int = 1000,
    stride: int = 5,
    seed: int = 0,
    progress: bool = True,
    device: str | None = None,
    on_extrapolation: str = "warn",
) -> Path:
    """Run the repeats; returns the output directory (its files are named in slhmc.rundir). Whether
    extrapolation was flagged or stopped a repeat is in ``md.json`` (``extrapolation.repeats``), see
    :func:`slhmc.rundir.stopped_repeats`."""
    if ensemble not in ("nve", "nvt"):
        raise ValueError(f"ensemble must be nve or nvt, got {ensemble!r}")
    if on_extrapolation not in ON_EXTRAPOLATION:
        raise ValueError(f"on_extrapolation must be one of {ON_EXTRAPOLATION}, got {on_extrapolation!r}")
    for name, value, least in (("steps", steps, 0), ("repeats", repeats, 1), ("equilibrate", equilibrate, 0),
                               ("stride", stride, 1)):
        if value < least:
            raise ValueError(f"{name} must be at least {least}, got {value}")
    if not (temperature_K > 0 and timestep_fs > 0):
        raise ValueError(f"temperature ({temperature_K} K) and timestep ({timestep_fs} fs) must be positive")
    out_dir = Path(out)
    if (out_dir / MD_META).exists():
        raise FileExistsError(f"{out_dir} already holds an MD run; choose another --out")
    # every input is read before the output folder is made: a wrong path leaves no empty folder behind
    start = _read_start(structure)
    if not Path(model).exists():
        raise FileNotFoundError(f"model {model} does not exist (a run directory or a model file)")
    calc = load_calculator(model, device=device)
    elements = {int(z) for z in calc.model.spec.elements}
    if missing := sorted(set(start.get_chemical_symbols()) - {chemical_symbols[z] for z in elements}):
        raise ValueError(f"structure {structure} has {', '.join(missing)}, which the model {model} has no network "
                         f"for (its elements: {', '.join(chemical_symbols[z] for z in sorted(elements))})")
    out_dir.mkdir(parents=True, exist_ok=True)
    calc.warn_extrapolation = False  # reported below, with the MD step
    checked = calc.checks_extrapolation
    if not checked:
        log.warning("the model has no recorded training feature range: extrapolation is not checked%s",
                    " (--on-extrapolation stop has no effect)" if on_extrapolation == "stop" else "")
    meta = {"kind": "md", "model": str(model), "model_version": calc.info.get("version"), "structure": str(structure),
            "temperature_K": temperature_K, "steps": steps, "timestep_fs": timestep_fs, "ensemble": ensemble,
            "repeats": repeats, "equilibrate": equilibrate, "stride": stride, "seed": seed,
            "extrapolation": {"checked": checked, "on_extrapolation": on_extrapolation,
                              "relative_margin": EXTRAPOLATION_RELATIVE_MARGIN,
                              "absolute_margin": EXTRAPOLATION_ABSOLUTE_MARGIN, "repeats": []}}
    _write_json(out_dir / MD_META, meta)
    for r in range(repeats):
        rng = np.random.default_rng([seed, r])
        atoms = start.copy()
        atoms.calc = calc
        calc.reset_extrapolation_counter()
        if not atoms.constraints:
            # the centre of mass stays at rest through the thermostat's random kicks (ASE's replacement
            # for Langevin(fixcm=True)); the temperature then counts 3N - 3 degrees of freedom
            atoms.set_constraint(FixCom())
        thermalize_momenta(atoms, temperature_K, rng=rng)
        Stationary(atoms)  # no centre-of-mass drift
        dt = timestep_fs * units.fs
        rep_dir = repeat_dir(out_dir, r)
        rep_dir.mkdir(exist_ok=True)
        traj_path = rep_dir / TRAJECTORY
        watch = ExtrapolationWatch(calc, r, rep_dir, timestep_fs, stop=on_extrapolation == "stop")
        thermostat = Langevin(atoms, dt, temperature_K=temperature_K, friction=LANGEVIN_FRICTION_PER_FS / units.fs,
                              fixcm=False, rng=rng)
        thermostat.attach(watch.observe, 1, atoms, thermostat, equilibrate)
        if ensemble == "nve":
            dyn = VelocityVerlet(atoms, dt)
            dyn.attach(watch.observe, 1, atoms, dyn, 0)
        else:
            dyn = thermostat
        total = equilibrate + steps
        bar = tqdm(total=total, desc=f"MD {r + 1}/{repeats}", unit="step", disable=not progress, dynamic_ncols=True)
        stopped = False
        with open(rep_dir / ENERGIES, "w", newline="") as f:
            table = csv.writer(f)
            table.writerow(CSV_COLUMNS)
            try:
                for _ in range(equilibrate // 50):
                    thermostat.run(50)
                    bar.update(50)
                thermostat.run(equilibrate % 50)
                bar.update(equilibrate % 50)
                for k in range(steps // stride + 1):
                    if k:
                        dyn.run(stride)
                        bar.update(stride)
                    _write_frame(table, traj_path, atoms, k * stride, timestep_fs, watch)
            except ExtrapolationStop as stop:
                stopped = True
                _write_frame(table, traj_path, atoms, stop.step, timestep_fs, watch)  # files end at the flagged step
        bar.close()
        record = watch.record(stopped)
        meta["extrapolation"]["repeats"].append(record)
        _write_json(out_dir / MD_META, meta)
        if stopped:
            log.error("repeat %d stopped at step %d (t = %.1f fs): the network extrapolates (%d atoms outside the "
                      "training range); its files end there", r, record["first_step"], record["first_time_fs"],
                      record["first_extrapolating_atoms"])
        elif checked and record["first_step"] is not None:
            log.warning("repeat %d: extrapolation at %d of %d MD steps, first at step %d (t = %.1f fs), at most %d "
                        "atoms; results after that step are not to be trusted", r, record["flagged_steps"],
                        record["checked_steps"], record["first_step"], record["first_time_fs"],
                        record["max_extrapolating_atoms"])
        elif checked:
            log.info("repeat %d: no extrapolation in %d MD steps", r, record["checked_steps"])
        log.info("repeat %d done: %s", r, traj_path)
    return out_dir
