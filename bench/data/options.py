"""A suite's dataset options: checked against the registered builder, turned into a data source, built."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_type_hints

from bench.core.errors import ConfigError
from bench.core.registry import DATASETS
from bench.core.schema import convert_value, unknown_key
from bench.data.base import DATA_ROOT_ENV, DataError, Dataset
from bench.data.idx import mnist_source

# Smallest allowed value of the integer dataset options with these names (any dataset's, plugins' too).
OPTION_LOW = {"image_size": 1, "num_train": 1, "num_test": 1, "num_classes": 2, "channels": 1, "size": 1,
               "num_workers": 0, "validation": 0}

# Datasets whose data can differ from their usual full set depending on which files exist; see data_source.
_DATA_SOURCES = {"mnist": mnist_source}


def data_source(name: str, options: Mapping[str, Any], root: Path | None) -> str | None:
    """Which data the registered dataset ``name`` will load, when not its usual full set (e.g. MNIST_SUBSET_SOURCE),
    else None; cheap (file checks, no loading), so a run id can record it and full and fallback data never share
    an id."""
    source = _DATA_SOURCES.get(name)
    return source(root, **options) if source is not None else None


def check_dataset_options(name: str, options: Mapping[str, Any]) -> list[str]:
    """Problems with a suite's options for the registered dataset ``name``: unknown names, values of the wrong type
    (from the builder's annotations) or out of range; checked before anything is loaded or written."""
    builder = DATASETS.get(name)
    accepted = [p for p in inspect.signature(builder).parameters if p != "root"]
    try:
        hints = get_type_hints(builder)
    except (NameError, TypeError):  # a plugin's annotations that do not resolve: check the names only
        hints = {}
    problems: list[str] = []
    for key, value in options.items():
        path = f"dataset.{key}"
        if key not in accepted:
            problems.append(unknown_key(path, key, sorted(accepted), f"Options of dataset '{name}'"))
            continue
        if key not in hints:
            continue
        found: list[str] = []
        low = OPTION_LOW.get(key)
        try:
            convert_value(value, hints[key], path, {"low": low} if low is not None else {}, found)
        except TypeError:  # an annotation the schema does not know (e.g. Path): passed on unchecked
            continue
        problems.extend(found)
    return problems


def keyed_dataset_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """A dataset's options as they enter ids: those written at the builder's default stay out (like every option
    added later), so writing ``validation: 0`` or ``num_train: 512`` gives the id of not writing it."""
    defaults = {p.name: p.default for p in inspect.signature(DATASETS.get(name)).parameters.values()
                if p.default is not inspect.Parameter.empty} if name in DATASETS else {}
    return {k: v for k, v in options.items() if k not in defaults or v != defaults[k]}


def check_data_root(name: str, options: Mapping[str, Any], root: Path | None) -> None:
    """A DataError when a data root is given but is not a directory (download=true makes a missing one): a root
    given is honoured, never silently replaced by a default. ``run`` and ``plan`` refuse it before any output."""
    if root is not None and not root.is_dir() and not (options.get("download") and not root.exists()):
        what = "is not a directory" if root.exists() else "does not exist"
        raise DataError(f"dataset '{name}': data root '{root}' {what}. Looked in:\n  - {root}\nTo fix: pass "
                        f"--data-root DIR (or the suite's data_root, or {DATA_ROOT_ENV}=DIR) naming the folder that "
                        "holds the dataset, or give none to use the dataset's default location.")


def build_dataset(name: str, options: Mapping[str, Any], root: Path | None, image_size: int | None) -> Dataset:
    """Build the registered dataset ``name`` with the suite's ``options``; ``image_size`` (the model's input size)
    resizes images once at load. Invalid options raise a ConfigError naming each (see check_dataset_options)."""
    builder = DATASETS.get(name)
    problems = check_dataset_options(name, options)
    if problems:
        raise ConfigError(problems)
    check_data_root(name, options, root)
    opts = dict(options)
    if "image_size" in opts:
        if image_size is not None and opts["image_size"] != image_size:
            raise DataError(
                f"dataset '{name}': option image_size={opts['image_size']} conflicts with the "
                f"model's input size {image_size}"
            )
        image_size = opts.pop("image_size")
    return builder(root=root, image_size=image_size, **opts)
