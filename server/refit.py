"""When the next refit is due: the one place that decides.

A refit is due after ``training.interval`` new labels. In free mode every label counts (speculative
ones too) and the chain never waits: the model is used by the trials started after it arrives. In
deterministic mode only chain labels count, so refits happen at fixed chain trials, and no
trajectory is started past the next refit boundary until that model is in (the chain is then the
same for any number of workers, and after a resume). Not requested: with a fit still running,
after ``training.stop_after``, or when every remaining trial's trajectory has already started (no
trial could use the model; the count stays due, so a dropped pre-fetched trial or more
``hmc.trials`` on resume asks for it then).
"""

from __future__ import annotations

from slhmc.config import TrainingConfig

from .tasks import Refit


class RefitPolicy:
    def __init__(self, training: TrainingConfig, trials: int, deterministic: bool) -> None:
        self.interval = training.interval
        self.stop_after = training.stop_after
        self.trials = trials
        self.deterministic = deterministic
        self.labels_since_fit = 0
        self.in_flight: Refit | None = None

    def count_label(self, chain: bool) -> None:
        """A new label: a chain trial's (``chain``) or a dropped speculative proposal's."""
        if chain or not self.deterministic:
            self.labels_since_fit += 1

    def take_due(self, trial: int, next_trajectory: int) -> bool:
        """Whether to request a refit now (and if so, count labels from zero again); ``trial`` is the
        chain's next trial, ``next_trajectory`` the first trial whose trajectory has not been started."""
        if self.interval <= 0 or self.in_flight is not None or self.labels_since_fit < self.interval:
            return False
        if self.stop_after and trial >= self.stop_after:
            return False
        if next_trajectory >= self.trials:
            return False
        self.labels_since_fit = 0
        return True

    def start(self, refit: Refit) -> None:
        """A fit was requested (a due one, model 0, or one pending when the run stopped)."""
        self.in_flight = refit

    def finished(self) -> None:
        self.in_flight = None

    def speculation_limit(self, trial: int) -> int:
        """First trial whose trajectory may not be started yet: in deterministic mode, the one that
        needs a model being fitted, or to be fitted after the trial before it."""
        if not self.deterministic or self.interval <= 0:
            return self.trials
        if self.in_flight is not None:
            return trial
        boundary = trial + max(self.interval - self.labels_since_fit, 0)
        if self.stop_after and boundary >= self.stop_after:
            return self.trials
        return boundary
