"""scripts/setup.sh on a machine it already set up: nothing is installed again unless pyproject.toml changed.

A stand-in ``.venv/bin/python`` records what the script asks of it: real installs need the package index and
minutes, and what is checked here is the script's decision, not pip."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

from tests.conftest import PROJECT

RECORDING = """#!/usr/bin/env bash
echo "$*" >> "$(dirname "$0")/../../calls.log"
case "$*" in *print*) echo "torch 0.0";; esac
"""


def setup(checkout: Path) -> list[str]:
    """Run the checkout's setup.sh; the stand-in python's calls during it."""
    log = checkout / "calls.log"
    log.unlink(missing_ok=True)
    env = dict(os.environ, PATH=f"{checkout / 'bin'}:{os.environ['PATH']}")
    done = subprocess.run(["bash", str(checkout / "scripts" / "setup.sh")], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return log.read_text().splitlines() if log.exists() else []


def test_setup_installs_again_only_when_pyproject_changes(tmp_path: Path) -> None:
    (tmp_path / "scripts").mkdir()
    shutil.copy(PROJECT / "scripts" / "setup.sh", tmp_path / "scripts")
    shutil.copy(PROJECT / "pyproject.toml", tmp_path)
    for tool, text in ((tmp_path / ".venv" / "bin" / "python", RECORDING),
                       (tmp_path / "bin" / "apt-get", "#!/bin/sh\n")):   # never install Debian packages from a test
        tool.parent.mkdir(parents=True)
        tool.write_text(text)
        tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    installs = [call for call in setup(tmp_path) if "pip" in call and " install -e " in call]
    assert installs == ["-m pip --disable-pip-version-check -q install -e .[test]"]
    assert setup(tmp_path) == []   # the second call: not even python is started
    with open(tmp_path / "pyproject.toml", "a") as handle:   # a new dependency, as later issues add
        handle.write("\n# changed\n")
    assert any(" install -e " in call for call in setup(tmp_path))
