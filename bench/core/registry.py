"""Name -> factory registries for methods, models and datasets (in the spirit of timm's model registry).

Suites refer to things by the names registered here; nothing is ever imported from a name a user typed
except through a registry or an explicit ``--plugin``. Each entry remembers where it came from (built-in, a
plugin file, a module, an installed package's entry point), which ``list`` shows and clash errors name.
"""
from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

T = TypeVar("T")
BUILTIN = "built-in"
_origin = [BUILTIN]  # where entries registered now come from (set while a plugin loads)


@contextmanager
def registering_from(origin: str) -> Iterator[None]:
    """Entries registered inside the block are recorded as coming from ``origin``."""
    _origin.append(origin)
    try:
        yield
    finally:
        _origin.pop()


class NameClash(ValueError):
    """A name registered a second time, by other code."""


class UnknownNameError(KeyError):
    """A name that is not in a registry; the message lists close matches."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain.
        return str(self.args[0])


class Registry(Generic[T]):
    """A small name -> entry mapping with a decorator, wildcard listing and 'did you mean' errors."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._origins: dict[str, str] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator: ``@MODELS.register("resnet56")`` (the entry's ``__name__`` when no name is given)."""

        def decorate(entry: T) -> T:
            self.add(name or entry.__name__, entry)
            return entry

        return decorate

    def add(self, name: str, entry: T) -> None:
        if name in self._entries and self._entries[name] is not entry:
            here, there = _origin[-1], self._origins[name]
            raise NameClash(f"{self.kind} '{name}' from {here} clashes with the {self.kind} of that name from "
                            f"{there}; rename one of them.")
        self._entries[name] = entry
        self._origins.setdefault(name, _origin[-1])

    def origin(self, name: str) -> str:
        """Where ``name`` was registered from: ``built-in``, ``file ...``, ``module ...`` or ``entry point ...``."""
        return self._origins[name]

    def snapshot(self) -> tuple[dict[str, T], dict[str, str]]:
        return dict(self._entries), dict(self._origins)

    def restore(self, state: tuple[dict[str, T], dict[str, str]]) -> None:
        """Forget what was registered since ``snapshot`` (a plugin that failed halfway leaves nothing behind)."""
        self._entries, self._origins = dict(state[0]), dict(state[1])

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, list(self._entries), n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return f"unknown {self.kind} '{name}'.{hint} Known: {', '.join(sorted(self._entries))}."

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)


METHODS: Registry = Registry("method")
# prune.count_rule: rule(n, ratio) -> filters a layerwise cut removes out of n (bench.pruning.num_pruned applies it)
COUNT_RULES: Registry = Registry("count rule")
MODELS: Registry = Registry("model")
DATASETS: Registry = Registry("dataset")
