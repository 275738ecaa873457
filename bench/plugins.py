"""Loading registry entries: the built-in ``methods`` package, and outside code a user names with --plugin.

This is the one place in ``bench`` that imports ``methods``; outside code is only ever imported when a user
names it (``--plugin FILE_OR_MODULE`` or a suite's ``plugins:`` list).
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from bench.errors import ConfigError

_loaded: set[str] = set()


def load_builtin() -> None:
    """Register the models, datasets and methods that ship with the harness."""
    import bench.data  # noqa: F401  (registers datasets)
    import bench.models  # noqa: F401  (registers models)
    import methods  # noqa: F401  (registers methods)


def load_plugin(spec: str, base: Path | None = None) -> None:
    """Import a plugin given as a ``.py`` file (relative to ``base`` if not found as given) or a module name."""
    path = Path(spec).expanduser()
    if not path.exists() and base is not None and (base / path).exists():
        path = base / path
    key = str(path.resolve()) if path.suffix == ".py" or path.exists() else spec
    if key in _loaded:
        return
    try:
        if path.suffix == ".py" or path.exists():
            if not path.is_file():
                raise ConfigError(f"plugin file '{spec}' not found. Give a .py file or an importable module name.")
            name = f"bench_plugin_{path.stem}_{abs(hash(key)) % 10**8}"
            module_spec = importlib.util.spec_from_file_location(name, path)
            if module_spec is None or module_spec.loader is None:
                raise ConfigError(f"plugin '{spec}' cannot be imported as a Python file.")
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            module_spec.loader.exec_module(module)
        else:
            importlib.import_module(spec)
    except ConfigError:
        raise
    except ModuleNotFoundError as err:
        raise ConfigError(f"plugin '{spec}' not found ({err}). Give a .py file or an importable module name.") from None
    except Exception as err:
        raise ConfigError(f"plugin '{spec}' failed to import: {type(err).__name__}: {err}") from None
    _loaded.add(key)
