"""A table cell of the report: the mean of a group of values with its t-interval (clipped to the values' possible
range when given), and the cells of a frame grouped by some columns. ``bench.report.tables`` builds its tables from
these."""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from bench.report.stats import mean_ci

LEVEL = 0.95  # confidence level of every interval in the report
PERCENT = (0.0, 100.0)  # the possible range of an accuracy in percent: no interval leaves it


@dataclass(frozen=True)
class Cell:
    """Mean, t-interval half-width and count of one group of values; with ``bounds`` (e.g. 0 and 100 for an
    accuracy in percent) the interval's ends are clipped to the possible range and shown as a range when clipped."""

    mean: float
    half: float
    n: int
    bounds: tuple[float, float] | None = None

    @classmethod
    def of(cls, values: Iterable[float], bounds: tuple[float, float] | None = None) -> Cell:
        """The cell of some values (NaNs ignored)."""
        return cls(*mean_ci(np.fromiter(values, dtype=float), LEVEL), bounds)

    @property
    def low(self) -> float:
        low = self.mean - self.half
        return max(low, self.bounds[0]) if self.bounds and not math.isnan(low) else low

    @property
    def high(self) -> float:
        high = self.mean + self.half
        return min(high, self.bounds[1]) if self.bounds and not math.isnan(high) else high

    def text(self, expected: int, digits: int = 2, fmt: str = "f") -> str:
        """'93.10 ± 0.21' ('99.60 (CI 98.90–100.00)' where the interval meets a bound), with '(n=k)' when fewer values
        than ``expected``; '—' for none."""
        if self.n == 0:
            return "—"
        body = f"{self.mean:.{digits}{fmt}}"
        if self.n > 1 and (self.low, self.high) == (self.mean - self.half, self.mean + self.half):
            body += f" ± {self.half:.{digits}{fmt}}"
        elif self.n > 1:
            body += f" (CI {self.low:.{digits}{fmt}}–{self.high:.{digits}{fmt}})"
        return body + (f" (n={self.n})" if self.n < expected else "")


def cells(runs: pd.DataFrame, value: str | Callable[[pd.DataFrame], pd.Series], by: list[str],
          bounds: tuple[float, float] | None = None) -> dict[tuple[Any, ...], Cell]:
    """Mean ± t-interval of ``value`` (a column, or a function of the frame) per group of ``by``, the interval
    clipped to ``bounds`` when given."""
    values = runs[value] if isinstance(value, str) else value(runs)
    frame = runs[by].assign(_v=pd.to_numeric(values).astype(float))
    return {key if isinstance(key, tuple) else (key,): Cell.of(group._v, bounds)
            for key, group in frame.groupby(by, sort=False, dropna=False)}
