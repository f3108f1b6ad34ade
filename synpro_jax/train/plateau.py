"""Validation-loss plateau detection: the signal the SynPro loop uses to start a round."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class PlateauDetector:
    """Plateau when the best loss of the last ``window`` evaluations improves on the best loss before them by
    less than ``min_rel_improvement`` (relative)."""

    window: int = 3
    min_rel_improvement: float = 0.01
    history: list[float] = dataclasses.field(default_factory=list)

    def __post_init__(self):
        if self.window < 1:
            raise ValueError(f"PlateauDetector.window={self.window}: must be >= 1")
        if self.min_rel_improvement < 0:
            raise ValueError(f"PlateauDetector.min_rel_improvement={self.min_rel_improvement}: must be >= 0")

    def update(self, loss: float) -> bool:
        self.history.append(float(loss))
        return self.plateaued

    @property
    def plateaued(self) -> bool:
        if len(self.history) <= self.window:
            return False
        before = min(self.history[: -self.window])
        recent = min(self.history[-self.window :])
        return (before - recent) / abs(before) < self.min_rel_improvement

    def state_dict(self) -> dict:
        return {"history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.history = [float(x) for x in state.get("history", [])]
