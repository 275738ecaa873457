"""Published results to print beside ours: small CSVs shipped in ``bench/references/`` or given by path.

A reference CSV has the columns method, model, dataset, ratio, lr, acc_mean, acc_std, source (accuracy in
percent; ``method`` is this harness's method label) and may start with ``#`` comment lines. A suite names one
with ``reference: tpp_table1`` (a shipped name) or ``reference: path/to/file.csv``.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

import pandas as pd

from bench.core.errors import UserError

REQUIRED = ["method", "model", "dataset", "ratio", "lr", "acc_mean", "acc_std", "source"]


class ReferenceError(UserError):
    """A reference CSV that is missing or does not have the expected columns."""


def shipped() -> dict[str, Path]:
    """The reference CSVs shipped with the package, by name (file stem)."""
    folder = resources.files("bench") / "references"
    return {Path(p.name).stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".csv")}


def resolve(spec: str | Path, base: Path | None = None) -> Path:
    """A shipped name (``tpp_table1``) or a CSV path (relative to ``base``, then to the working directory)."""
    text = str(spec)
    known = shipped()
    if text in known:
        return known[text]
    path = Path(text).expanduser()
    if base is not None and not path.is_absolute() and (base / path).exists():
        return base / path
    if path.suffix.lower() == ".csv" and path.is_file():
        return path
    raise ReferenceError(f"reference '{text}' is neither a shipped reference ({', '.join(sorted(known)) or 'none'}) "
                         "nor an existing .csv file. Fix the suite's 'reference' key or --reference.")


def load_reference(spec: str | Path, base: Path | None = None) -> pd.DataFrame:
    """Read and check a reference CSV; ratio becomes the report's ratio label ('0.9'), lr a float."""
    path = resolve(spec, base)
    try:
        frame = pd.read_csv(path, comment="#", dtype={"ratio": str})
    except (OSError, ValueError) as err:
        raise ReferenceError(f"reference '{path}' cannot be read as CSV ({err}).") from None
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise ReferenceError(f"reference '{path}' lacks the column(s) {', '.join(missing)}; it needs "
                             f"{', '.join(REQUIRED)}.")
    try:
        for column in ("lr", "acc_mean", "acc_std"):
            frame[column] = pd.to_numeric(frame[column])
    except ValueError as err:
        raise ReferenceError(f"reference '{path}': column lr, acc_mean or acc_std holds a non-number ({err})."
                             ) from None
    frame["ratio"] = [f"{float(r):g}" if _is_number(r) else str(r) for r in frame.ratio]
    frame.attrs["path"] = str(path)
    return frame


def _is_number(text: str) -> bool:
    """Whether a ratio cell is a single number (else a per-layer profile label)."""
    try:
        float(text)
    except ValueError:
        return False
    return True
