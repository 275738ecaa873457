"""Progress bars with ETAs (tqdm) for a suite and for each training phase; silent with ``--quiet``."""
from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm


class PhaseBar:
    """An epoch bar for one training phase; called after every epoch with (epoch, total, row) (in
    ``fit``'s hook list as an ``EpochHooks`` report)."""

    def __init__(self, description: str, disable: bool) -> None:
        self._bar = tqdm(desc=description, unit="epoch", leave=False, disable=disable, dynamic_ncols=True)

    def __call__(self, epoch: int, total: int, row: dict[str, Any]) -> None:
        if self._bar.total != total:
            self._bar.total = total
        self._bar.n = epoch
        self._bar.set_postfix(loss=f"{row['train_loss']:.3f}", acc=f"{row['test_acc']:.4f}", refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        self._bar.close()


class Progress:
    """Creates the suite bar (runs, with ETA) and the per-phase epoch bars."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet

    def suite(self, total: int, description: str) -> tqdm:
        """The suite's bar over ``total`` runs; none when there is nothing to do."""
        return tqdm(total=total, desc=description, unit="run", disable=self.quiet or total == 0, dynamic_ncols=True)

    def phase(self, description: str) -> PhaseBar:
        return PhaseBar(description, self.quiet)
