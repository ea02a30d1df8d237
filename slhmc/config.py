"""The run configuration (TOML), validated before any process starts.

Section and key names are a stable interface (DESIGN section 6). Unknown keys are errors, so a
typo is reported with its name instead of being silently ignored.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SystemConfig(_Section):
    structure: str = Field(description="start structure, relative to the config file; any ase.io.read format")
    temperature: float = Field(gt=0, description="K")


class ReferenceConfig(_Section):
    calculator: str = "emt"  # a name in slhmc.clients.calculators.BUILTIN or "module:function"
    options: dict[str, Any] = Field(default_factory=dict)
    retries: int = Field(2, ge=0, description="retries of a failed reference call before the run stops")
    timeout: float = Field(0.0, ge=0, description="s; a reference call running longer is retried elsewhere; 0 = none")


class HMCConfig(_Section):
    trials: int = Field(1000, ge=1)
    md_steps: int = Field(20, ge=1)
    timestep: float = Field(0.25, gt=0, description="fs")
    seed: int = Field(7, ge=0, lt=2**63)
    deterministic: bool = False


class PotentialConfig(_Section):
    cutoff: float = Field(6.0, gt=1.5, description="Å, radial symmetry functions")
    angular_cutoff: float | None = Field(None, gt=0, description="Å, default min(cutoff, 4.5)")
    hidden: list[int] = Field(default_factory=lambda: [15, 15])
    activation: Literal["tanh", "silu", "softplus"] = "tanh"

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
    bootstrap: int = Field(20, ge=1, description="labelled perturbed copies of the start structure")
    bootstrap_displacement: float = Field(0.05, ge=0, description="Å, rms random displacement")
    bootstrap_strain: float = Field(0.02, ge=0, description="largest random isotropic strain")
    interval: int = Field(100, ge=0, description="refit after this many new labels; 0 = never")
    stop_after: int = Field(0, ge=0, description="no refits after this trial; 0 = never stop")
    force_weight: float = Field(0.1, ge=0)
    validation_fraction: float = Field(0.1, ge=0, lt=1)
    max_steps: int = Field(30, ge=1, description="L-BFGS outer steps per fit")


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

    @model_validator(mode="after")
    def _timeouts(self) -> Config:
        if self.workers.timeout <= 2 * self.workers.heartbeat:
            raise ValueError("workers.timeout must exceed twice workers.heartbeat")
        return self

    @property
    def structure_path(self) -> Path:
        return Path(self.base_dir) / self.system.structure


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and the keys."""


def _describe(err: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"  {key}: {e['msg']}")
    return "\n".join(lines)


def from_dict(data: dict, source: str = "<dict>", base_dir: str | Path = ".") -> Config:
    try:
        return Config.model_validate({**data, "base_dir": str(base_dir)})
    except ValidationError as err:
        raise ConfigError(_describe(err, source)) from None


def load_config(path: str | Path) -> Config:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config {path} is not valid TOML: {err}") from None
    return from_dict(data, str(path), path.resolve().parent)


def check_inputs(cfg: Config, local_reference: bool = False) -> None:
    """Checks that need the file system: the start structure and the calculator name.

    ``local_reference``: the DFT workers run on this machine (``slhmc run``), so a
    ``module:function`` factory must be importable here too.
    """
    from ase.io import read

    path = cfg.structure_path
    if not path.exists():
        raise ConfigError(f"system.structure: {path} does not exist")
    try:
        read(path)
    except Exception as err:
        raise ConfigError(f"system.structure: ase.io.read cannot read {path}: {err}") from None
    from slhmc.clients.calculators import CalculatorConfigError, check_name, resolve_factory

    try:  # the form everywhere; that the factory imports, only where the DFT workers run here
        (resolve_factory if local_reference else check_name)(cfg.reference.calculator)
    except CalculatorConfigError as err:
        raise ConfigError(str(err)) from None
