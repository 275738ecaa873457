"""Loading registry entries: the built-in ``methods`` package, and outside code a user names.

This is the one place in ``bench`` that imports ``methods``. Outside code is only ever imported when a user names
it: ``--plugin`` or a suite's ``plugins:`` list (a ``.py`` file, a module, or the name of an installed package's
entry point in the ``pruning_bench.plugins`` group), or ``$BENCH_PLUGINS`` (``all`` installed entry points, or a
comma-separated list of their names). An entry point names a module that registers on import, or a function
(``pkg.mod:register``) that is called. A plugin that fails leaves nothing registered.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.core.errors import ConfigError
from bench.core.registry import BUILTIN, DATASETS, METHODS, MODELS, NameClash, Registry, registering_from

log = logging.getLogger(__name__)

GROUP = "pruning_bench.plugins"
ENV = "BENCH_PLUGINS"
_loaded: set[str] = set()


class PluginClash(ConfigError):
    """A plugin registers a name that is already taken (by a built-in or another plugin)."""


def load_builtin() -> None:
    """Register the models, datasets and methods that ship with the harness."""
    import bench.data  # noqa: F401  (registers datasets)
    import bench.models  # noqa: F401  (registers models)
    import methods  # noqa: F401  (registers methods)


SHIPPED = ("bench.data", "bench.models", "methods")  # the packages load_builtin imports


def reloadable(registry: Registry[Any], name: str) -> bool:
    """Whether another process of this command registers ``name`` too: a built-in from a shipped package, or an
    installed plugin ``$BENCH_PLUGINS`` enables (child processes inherit it); not a ``--plugin`` file or module, nor
    an entry other code registered in this process (a test's subclass), which a worker could not import."""
    origin = registry.origin(name)
    if origin.startswith("entry point "):
        wanted = os.environ.get(ENV, "").strip()
        return wanted == "all" or origin.split("'")[1] in {n.strip() for n in wanted.split(",")}
    module = getattr(registry.get(name), "__module__", "") or ""
    return origin == BUILTIN and any(module == p or module.startswith(p + ".") for p in SHIPPED)


def installed() -> dict[str, metadata.EntryPoint]:
    """The installed plugins: entry points in the ``pruning_bench.plugins`` group, by name (first on sys.path wins)."""
    found: dict[str, metadata.EntryPoint] = {}
    for entry in metadata.entry_points(group=GROUP):
        found.setdefault(entry.name, entry)
    return found


@contextmanager
def _atomic(origin: str) -> Iterator[None]:
    """Register as ``origin``; on any error forget what was registered meanwhile."""
    registries = (METHODS, MODELS, DATASETS)
    states = [r.snapshot() for r in registries]
    try:
        with registering_from(origin):
            yield
    except BaseException:
        for registry, state in zip(registries, states):
            registry.restore(state)
        raise


def _origin_of(entry: metadata.EntryPoint) -> str:
    dist = entry.dist
    package = f"{dist.metadata['Name']} {dist.version}" if dist is not None else "an unknown package"
    return f"entry point '{entry.name}' ({package})"


def _load_entry_point(entry: metadata.EntryPoint) -> None:
    loaded = entry.load()
    if entry.attr and callable(loaded):  # "pkg.mod:register": a function that registers
        loaded()


def _import(spec: str, action: Callable[[], None], origin: str) -> None:
    """Run ``action`` (an import) as ``origin``; every failure becomes one ConfigError naming the plugin."""
    try:
        with _atomic(origin):
            action()
    except NameClash as err:
        raise PluginClash(f"plugin '{spec}': {err}") from None
    except ConfigError as err:
        raise ConfigError(f"plugin '{spec}': {err}") from None
    except ModuleNotFoundError as err:
        raise ConfigError(f"plugin '{spec}' not found ({err}). Give a .py file, an importable module name or an "
                          f"installed entry point of group {GROUP}.") from None
    except Exception as err:
        raise ConfigError(f"plugin '{spec}' failed to import: {type(err).__name__}: {err}") from None


def load_plugin(spec: str, base: Path | None = None) -> None:
    """Import a plugin: a ``.py`` file (relative to ``base`` if not found as given), an installed entry point's
    name, or a module name."""
    path = Path(spec).expanduser()
    if not path.exists() and base is not None and (base / path).exists():
        path = base / path
    is_file = path.suffix == ".py" or path.exists()
    key = str(path.resolve()) if is_file else spec
    if key in _loaded:
        return
    if is_file:
        if not path.is_file():
            raise ConfigError(f"plugin file '{spec}' not found. Give a .py file or an importable module name.")
        name = f"bench_plugin_{path.stem}_{abs(hash(key)) % 10**8}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise ConfigError(f"plugin '{spec}' cannot be imported as a Python file.")
        loader = module_spec.loader

        def run_file() -> None:
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            try:
                loader.exec_module(module)
            except BaseException:
                del sys.modules[name]
                raise

        _import(spec, run_file, f"file {path}")
    elif (entry := installed().get(spec)) is not None:
        _import(spec, lambda: _load_entry_point(entry), _origin_of(entry))
    else:
        _import(spec, lambda: importlib.import_module(spec), f"module {spec}")
    _loaded.add(key)


def load_enabled() -> None:
    """Load the installed plugins ``$BENCH_PLUGINS`` enables: ``all``, or a comma-separated list of names.

    A broken one is named in a warning and the others still load; a name clash or an unknown name is an error.
    """
    wanted = os.environ.get(ENV, "").strip()
    if not wanted:
        return
    available = installed()
    names = list(available) if wanted == "all" else [n.strip() for n in wanted.split(",") if n.strip()]
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ConfigError(f"${ENV} names {', '.join(map(repr, unknown))}, not installed entry points of group "
                          f"{GROUP} (installed: {', '.join(sorted(available)) or 'none'}). Use 'all' or their names.")
    for name in names:
        if name in _loaded:
            continue
        try:
            _import(name, lambda entry=available[name]: _load_entry_point(entry), _origin_of(available[name]))
        except PluginClash:
            raise
        except ConfigError as err:
            log.warning("installed plugin skipped: %s", err)
            continue
        _loaded.add(name)
