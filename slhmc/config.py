"""The run configuration (TOML), validated before any process starts.

Section and key names are a stable interface (docs/design.md, "Interfaces"). Unknown keys are errors, so a
typo is reported with its name (and the closest allowed name of its section) instead of being
silently ignored.
"""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

if TYPE_CHECKING:
    from slhmc.potential.network import Architecture
    from slhmc.potential.training import FitSettings


ADAPT_BLOCK = 20  # trials per block of the NPT volume-step adaptation (slhmc.hmc.npt.VolumeStep)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _one_or_more(value: object) -> object:
    """A single path where a list of paths is expected."""
    return [value] if isinstance(value, str) else value


class SystemConfig(_Section):
    structure: str = Field(description="start structure, relative to the config file; any ase.io.read format")
    temperature: float = Field(gt=0, description="K")
    # GPa; set: NPT (the cell is sampled too, [hmc] cell and volume_*); absent: NVT, the cell fixed
    pressure: float | None = Field(None, description="GPa; absent = NVT")


class ReferenceConfig(_Section):
    calculator: str = "emt"  # a name in slhmc.clients.references.CODES or "module:function"
    options: dict[str, Any] = Field(default_factory=dict)
    retries: int = Field(2, ge=0, description="retries of a failed reference call before the run stops")
    timeout: float = Field(0.0, ge=0, description="s; a reference call running longer is retried elsewhere; 0 = none")


class HMCConfig(_Section):
    trials: int = Field(1000, ge=1)
    md_steps: int = Field(20, ge=1)
    timestep: float = Field(0.25, gt=0, description="fs")
    seed: int = Field(7, ge=0, lt=2**63)
    deterministic: bool = False
    # NPT only (system.pressure set): each trial is a cell trial with probability volume_probability,
    # an ML inner chain of volume_inner_steps Metropolis cell steps corrected by the reference energy
    cell: Literal["isotropic", "anisotropic"] = "isotropic"
    volume_probability: float = Field(0.2, gt=0, lt=1, description="fraction of trials that move the cell")
    volume_inner_steps: int = Field(10, ge=1, description="ML Metropolis cell steps per cell trial")
    volume_step: float = Field(0.01, gt=0, le=1, description="half-width of a cell step in ln V (anisotropic: "
                               "each of the six cell coordinates within ±volume_step/3); the start value when "
                               "adapted")
    volume_adapt_until: int = Field(200, ge=0, description="trial after which volume_step is frozen (adapted in "
                                    "blocks before it toward an inner acceptance of 0.3-0.5; 0 = never adapted); "
                                    "discard the trials before it as equilibration")


class PotentialConfig(_Section):
    cutoff: float = Field(6.0, gt=1.5, description="Å, radial symmetry functions")
    angular_cutoff: float | None = Field(None, gt=0, description="Å, default min(cutoff, 4.5)")
    hidden: list[int] = Field(default_factory=lambda: [15, 15])
    activation: Literal["tanh", "silu", "softplus"] = "tanh"
    # a model file or a run directory (its newest model), relative to the config file: model 0 of
    # the run; its own descriptor, hidden layers and activation win over the keys above
    initial_model: str | None = None

    @field_validator("hidden")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if not v or any(h < 1 for h in v):
            raise ValueError("hidden must be a non-empty list of positive layer widths")
        return v

    @model_validator(mode="after")
    def _angular(self) -> PotentialConfig:
        if self.angular_cutoff is not None and self.angular_cutoff > self.cutoff:
            raise ValueError("angular_cutoff must not exceed cutoff")
        return self


class TrainingConfig(_Section):
    bootstrap: int = Field(20, ge=0, description="labelled perturbed copies of the start structure "
                           "(0 only with potential.initial_model or training.initial_dataset)")
    # labelled frames (energy and forces; any ase.io format), relative to the config file: labels
    # of the run before the bootstrap, used in every fit
    initial_dataset: Annotated[list[str], BeforeValidator(_one_or_more)] = Field(default_factory=list)
    bootstrap_displacement: float = Field(0.05, ge=0, description="Å, rms random displacement")
    bootstrap_strain: float = Field(0.02, ge=0, description="largest random isotropic strain")
    interval: int = Field(100, ge=0, description="refit after this many new labels; 0 = never")
    stop_after: int = Field(0, ge=0, description="no refits after this trial; 0 = never stop")
    force_weight: float = Field(0.1, ge=0)
    # measured on EMT Cu: 0.001 halves the held-out stress error with forces unchanged; 0.01 and
    # more trade force accuracy for it
    stress_weight: float = Field(0.001, ge=0, description="weight of the mean squared virial error per atom "
                                 "(eV²; labels that carry a stress: NPT runs, initial_dataset frames with one) "
                                 "relative to the energy term; 0 = not fitted")
    validation_fraction: float = Field(0.1, ge=0, lt=1)
    max_steps: int = Field(60, ge=1, description="L-BFGS outer steps per fit (fewer when validation stalls)")
    patience: int = Field(3, ge=1, description="outer steps without a validation-loss improvement of "
                          "min_improvement before a fit stops (early stopping)")
    min_improvement: float = Field(0.005, ge=0, lt=1, description="relative validation-loss improvement that "
                                   "counts for patience")
    force_atoms: int = Field(16, ge=0, description="atoms per label whose forces enter the fit once the "
                             "trainer holds full_force_mb of labels (bounds its memory per label); 0 = all")
    full_force_mb: float = Field(512.0, ge=0, description="MB of labels in the trainer up to which every label "
                                 "keeps the forces of all its atoms")


class WorkersConfig(_Section):
    dft: int = Field(1, ge=1, description="DFT workers that `slhmc run` starts")
    prefetch: bool = True
    # which outcome pre-fetched proposals assume: the more probable one under the measured acceptance
    # (auto), or always acceptance / always rejection
    prefetch_path: Literal["auto", "accept", "reject"] = "auto"
    heartbeat: float = Field(1.0, gt=0, description="s between heartbeats")
    timeout: float = Field(10.0, gt=0, description="s of silence before a worker is declared dead")


class OutputConfig(_Section):
    stride: int = Field(1, ge=1)


class Config(_Section):
    system: SystemConfig
    reference: ReferenceConfig = Field(default_factory=ReferenceConfig)
    hmc: HMCConfig = Field(default_factory=HMCConfig)
    potential: PotentialConfig = Field(default_factory=PotentialConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    workers: WorkersConfig = Field(default_factory=WorkersConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    base_dir: str = "."  # directory of the config file: relative paths are resolved against it
    _source: str = "<dict>"  # the config file, for errors found after validation (check_inputs); not a key

    @model_validator(mode="after")
    def _timeouts(self) -> Config:
        if self.workers.timeout <= 2 * self.workers.heartbeat:
            raise ValueError("workers.timeout must exceed twice workers.heartbeat")
        return self

    @model_validator(mode="after")
    def _one_port_per_dft_worker(self) -> Config:
        # two DFT workers of `slhmc run` on one machine cannot both listen on one fixed i-PI port
        port = self.reference.options.get("port") if self.reference.calculator == "socket" else None
        if port and self.workers.dft > 1:
            raise ValueError(f"reference.options.port = {port} with workers.dft = {self.workers.dft}: every DFT "
                             f"worker of this machine would listen on port {port}, and all but one fail; leave port "
                             "unset (each worker gets its own unix socket) or use workers.dft = 1")
        return self

    @model_validator(mode="after")
    def _bootstrap_source(self) -> Config:
        if self.training.bootstrap == 0 and not (self.potential.initial_model or self.training.initial_dataset):
            raise ValueError("training.bootstrap = 0 needs potential.initial_model or training.initial_dataset "
                             "(model 0 would be fitted on one label)")
        return self

    @model_validator(mode="after")
    def _npt(self) -> Config:
        if self.system.pressure is not None and self.hmc.volume_adapt_until and self.workers.dft > ADAPT_BLOCK:
            raise ValueError(f"hmc.volume_adapt_until with workers.dft = {self.workers.dft}: the volume step is "
                             f"adapted in blocks of {ADAPT_BLOCK} trials, at most that many DFT workers; set "
                             "hmc.volume_adapt_until = 0 and choose hmc.volume_step")
        return self

    @property
    def npt(self) -> bool:
        return self.system.pressure is not None

    def train_task_fields(self) -> dict:
        """The ``fit`` and ``architecture`` maps of every train_task (see :func:`trainer_settings`)."""
        fit, architecture = trainer_settings(self.potential, self.training, self.hmc.seed)
        return {"fit": asdict(fit), "architecture": asdict(architecture)}

    @property
    def structure_path(self) -> Path:
        return Path(self.base_dir) / self.system.structure

    @property
    def initial_model_path(self) -> Path | None:
        return None if self.potential.initial_model is None else Path(self.base_dir) / self.potential.initial_model

    @property
    def initial_dataset_paths(self) -> list[Path]:
        return [Path(self.base_dir) / p for p in self.training.initial_dataset]


class LocalReferenceConfig(_Section):
    """A DFT worker's own ``--config`` (``slhmc worker dft --config FILE``): only its ``[reference]``
    is read, and it may be the only section (a cluster's code command, pseudopotential folder). The
    other sections of a run config may be there too (``slhmc run`` passes its own config), are
    validated as in :class:`Config` so that a typo is still an error naming the key, and are not
    used: the run's settings are the server's. ``[system]`` is optional, its structure file not read.
    """

    reference: ReferenceConfig = Field(default_factory=ReferenceConfig)
    system: SystemConfig | None = None
    hmc: HMCConfig = Field(default_factory=HMCConfig)
    potential: PotentialConfig = Field(default_factory=PotentialConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    workers: WorkersConfig = Field(default_factory=WorkersConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    base_dir: str = "."  # directory of the config file: a module:function factory is also looked for there
    _source: str = "<dict>"


def trainer_settings(potential: PotentialConfig, training: TrainingConfig,
                     seed: int) -> tuple[FitSettings, Architecture]:
    """The fit settings and a new model's architecture that ``[potential]`` and ``[training]`` ask
    for: the one mapping from config keys to the trainer's inputs (the server's train_task and
    ``slhmc train`` both use it). ``seed``: of the validation split and the initial weights.
    """
    from slhmc.potential.descriptors import default_angular_cutoff
    from slhmc.potential.network import Architecture
    from slhmc.potential.training import FitSettings

    fit = FitSettings(
        force_weight=training.force_weight,
        stress_weight=training.stress_weight,
        validation_fraction=training.validation_fraction,
        max_steps=training.max_steps,
        patience=training.patience,
        min_improvement=training.min_improvement,
        seed=seed,
        force_atoms=training.force_atoms,
        full_force_mb=training.full_force_mb,
    )
    architecture = Architecture(
        cutoff=potential.cutoff,
        angular_cutoff=default_angular_cutoff(potential.cutoff, potential.angular_cutoff),
        hidden=tuple(potential.hidden),
        activation=potential.activation,
    )
    return fit, architecture


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and the keys."""


def _section_keys(model: type[BaseModel], loc: tuple) -> list[str] | None:
    """The key names allowed where ``loc`` (section, ..., key) points: the fields of the section
    that holds the key; None below a free-form table (reference.options)."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return [name for name in model.model_fields if name != "base_dir"]  # base_dir is set by the loader


def _did_you_mean(model: type[BaseModel], loc: tuple) -> str:
    """For an unknown key: the closest allowed name in its section (difflib), or the section where
    a key of exactly that name belongs; "" when neither exists."""
    allowed = _section_keys(model, loc)
    if not loc or allowed is None:
        return ""
    key = str(loc[-1])
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    if close:
        return f"; did you mean `{close[0]}`?"
    if len(loc) == 2:  # a known key in the wrong section
        homes = [name for name, f in model.model_fields.items() if isinstance(f.annotation, type)
                 and issubclass(f.annotation, BaseModel) and key in f.annotation.model_fields]
        if homes:
            return f"; `{key}` belongs in [{homes[0]}]"
    return ""


def describe_errors(err: ValidationError, source: str, model: type[BaseModel] | None = None) -> str:
    """One line per error, ``section.key: message``; an unknown key gets the closest allowed name
    of its section (``model``, default :class:`Config`: the schema the data was validated against)."""
    model = model or Config
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key{_did_you_mean(model, e['loc'])}")
        else:
            lines.append(f"  {key}: {e['msg']}")
    return "\n".join(lines)


def from_dict(data: dict, source: str = "<dict>", base_dir: str | Path = ".") -> Config:
    try:
        cfg = Config.model_validate({**data, "base_dir": str(base_dir)})
    except ValidationError as err:
        raise ConfigError(describe_errors(err, source)) from None
    cfg._source = source
    return cfg


def read_toml(path: str | Path) -> dict:
    """A config file's TOML as a dict; a missing file or bad TOML is a ConfigError naming the file."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config {path} is not valid TOML: {err}") from None


def load_config(path: str | Path) -> Config:
    path = Path(path)
    return from_dict(read_toml(path), str(path), path.resolve().parent)


def load_local_reference(path: str | Path) -> LocalReferenceConfig:
    """A DFT worker's ``--config``: its ``[reference]`` validated (the only section it needs), and
    the checks of that section that need no structure (:func:`check_reference`). Errors are
    ConfigErrors that name the file and the key."""
    path = Path(path)
    try:
        cfg = LocalReferenceConfig.model_validate({**read_toml(path), "base_dir": str(path.resolve().parent)})
    except ValidationError as err:
        raise ConfigError(describe_errors(err, str(path), LocalReferenceConfig)) from None
    cfg._source = str(path)
    check_reference(cfg.reference, cfg.base_dir, str(path))
    return cfg


def check_reference(reference: ReferenceConfig, base_dir: str | Path, source: str, here: bool = False) -> None:
    """``[reference]``: the calculator name's form, and its option names wherever they can be known
    (``here``: the DFT workers run on this machine, so a ``module:function`` factory is imported, from
    PYTHONPATH or ``base_dir``, the config's folder: the rule of
    slhmc.clients.references.add_config_dir, the same as on the DFT worker)."""
    from slhmc.clients.references import CalculatorConfigError, check_config

    try:
        check_config(reference.calculator, reference.options, here=here, config_dir=base_dir)
    except CalculatorConfigError as err:
        raise ConfigError(f"invalid config {source}:\n  {err}") from None


def check_inputs(cfg: Config, local_reference: bool = False) -> None:
    """Checks that need the file system: the start structure (readable, no overlapping atoms), the
    calculator name and its option names.

    ``local_reference``: the DFT workers run on this machine (``slhmc run``), so a
    ``module:function`` factory must be importable here too (from PYTHONPATH or the config file's
    folder, as on the DFT worker). Elsewhere the option names of the built-ins that import in
    milliseconds are checked where installed; the DFT worker checks the same names again with the
    same function (slhmc.clients.references.check_options).
    """
    from ase.io import read

    from slhmc.structure import StructureError, check_structure

    where = f"invalid config {cfg._source}:\n "  # then "  key: message", as for validation errors
    path = cfg.structure_path
    if not path.exists():
        raise ConfigError(f"{where} system.structure: {path} does not exist")
    try:
        start = read(path)
    except Exception as err:
        raise ConfigError(f"{where} system.structure: ase.io.read cannot read {path}: {err}") from None
    try:
        check_structure(start)
    except StructureError as err:
        raise ConfigError(f"{where} system.structure: {path}: {err}") from None
    if cfg.npt and not all(start.pbc):
        raise ConfigError(f"{where} system.pressure: NPT needs a structure periodic in all three directions; "
                          f"{path} has pbc {start.pbc.tolist()}")
    if cfg.npt and cfg.hmc.cell == "anisotropic" and start.cell.handedness < 0:
        raise ConfigError(f"{where} hmc.cell: anisotropic cell moves need a right-handed cell; {path} has a "
                          "left-handed one (swap two of its lattice vectors)")
    # the form everywhere; that the factory imports (PYTHONPATH or next to the config), only where DFT workers run here
    check_reference(cfg.reference, cfg.base_dir, cfg._source, here=local_reference)
    from slhmc.initial import check_initial_inputs

    check_initial_inputs(cfg)  # potential.initial_model, training.initial_dataset
