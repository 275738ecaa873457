"""Fault injection for crash-consistency tests: SIGKILL this process at a named point of the pipeline.

Set ``BENCH_FAULT=<point>`` (or ``<point>#<n>`` for its n-th occurrence) and the process kills itself there,
as a power cut or an out-of-memory kill would. Points: ``<phase>:epoch:<k>`` after an epoch's checkpoint is
saved (phases ``dense``, ``phase:<method>``, ``retrain``), ``pruned:saved``, and ``write:<file name>``
between writing a temporary file and renaming it into place. Unset, this costs one dictionary lookup.
"""
from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "BENCH_FAULT"
_seen: Counter[str] = Counter()


def point(name: str) -> None:
    """Kill the process if ``$BENCH_FAULT`` names this point (and occurrence)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    target, _, nth = spec.partition("#")
    if target != name:
        return
    _seen[name] += 1
    if _seen[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
