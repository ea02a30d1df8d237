"""What the server attaches to each task it submits: one typed context per kind of work, so that
a finished task is dispatched on its type (``match``), not on strings."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .prefetch import Proposal


@dataclass(frozen=True)
class BootstrapLabel:
    """Reference label of bootstrap structure ``index`` (0 is the start structure)."""

    index: int


@dataclass(frozen=True)
class ProposalMD:
    """The ML-MD trajectory of a proposal."""

    proposal: Proposal


@dataclass(frozen=True)
class ProposalLabel:
    """The reference label of a proposal's end point."""

    proposal: Proposal


@dataclass(frozen=True)
class Refit:
    """A fit of model ``version`` on ``label_ids`` (warm-started from the current model or not)."""

    version: int
    label_ids: list[int]
    warm_start: bool

    def checkpoint_fields(self) -> dict:
        return asdict(self)


TaskContext = BootstrapLabel | ProposalMD | ProposalLabel | Refit
