"""Which MaMA loss terms run at which optimizer step (METHOD.md section 2.5).

The paper trains CLIP alone for the first 8,000 optimizer steps (`late_loss`), then adds the
multi-view NT-Xent, the symmetric CLIP and the local alignment terms. That is a training decision,
so it lives here and not in the model config: `MamaTrainer` asks the schedule for the active terms
at the current step and passes them to `MamaModel.forward(loss_terms=...)`.

>>> schedule = LossSchedule.late(8000)
>>> schedule.active_terms(7999), schedule.active_terms(8000)
(('clip',), ('clip', 'multiview', 'symmetric_clip', 'local'))
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..configuration_mama import LOSS_TERMS

PAPER_LATE_LOSS_STEP = 8000


@dataclass(frozen=True)
class LossSchedule:
    """The optimizer step at which each loss term switches on (a term missing from `start_steps` never runs)."""

    start_steps: Mapping[str, int] = field(default_factory=lambda: {term: 0 for term in LOSS_TERMS})

    def __post_init__(self):
        unknown = set(self.start_steps) - set(LOSS_TERMS)
        if unknown:
            raise ValueError(f"Unknown loss term(s) {sorted(unknown)}; expected some of {LOSS_TERMS}.")
        negative = {term: step for term, step in self.start_steps.items() if int(step) < 0}
        if negative:
            raise ValueError(f"Loss start steps must be >= 0, got {negative}.")

    @classmethod
    def late(cls, late_loss_step: int = PAPER_LATE_LOSS_STEP) -> "LossSchedule":
        """CLIP from step 0, the multi-view, symmetric-CLIP and local terms from `late_loss_step` (paper: 8000)."""
        return cls({term: 0 if term == "clip" else int(late_loss_step) for term in LOSS_TERMS})

    def active_terms(self, step: int) -> tuple[str, ...]:
        """The terms that run at optimizer step `step`, in `LOSS_TERMS` order."""
        return tuple(term for term in LOSS_TERMS if term in self.start_steps and step >= int(self.start_steps[term]))


__all__ = ["PAPER_LATE_LOSS_STEP", "LossSchedule"]
