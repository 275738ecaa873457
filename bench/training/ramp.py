"""A penalty strength that grows by a step δ every K_u iterations up to a ceiling, then holds for K_s iterations:
the schedule GReg's growing L2 and TPP's Gram penalty share (each counts its phase on top of it)."""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Ramp:
    """The four numbers of a growing penalty and the update count that reaches the ceiling."""

    delta: float           # δ: the strength grows by this at each update
    ceiling: float         # the strength stops growing once it reaches this
    update_interval: int   # K_u: iterations between updates
    stabilize: int         # K_s: iterations the strength is held after growing

    @property
    def max_updates(self) -> int:
        """Updates until the strength reaches the ceiling: ceil(ceiling/δ), rounded first so that 1/1e-4 is 10000,
        not 10000.000000000002."""
        return math.ceil(round(self.ceiling / self.delta, 9))
