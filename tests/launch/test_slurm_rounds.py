"""A suite grown in rounds on a real Slurm (``scripts/slurm/setup.sh up``, issue 33): the controller runs where it is
started (the login node), each round is one job array it waits for, and the cells end with the seeds an inline
controller gives them. Skipped when no Slurm controller answers, as the other Slurm tests."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.cli import main
from bench.launch import read_submissions
from tests.launch.test_slurm import PROBLEM, jobs_to_cancel, plugin, slurm_node, slurm_suite  # noqa: F401 (fixtures)

pytestmark = pytest.mark.skipif(PROBLEM is not None, reason=PROBLEM or "")


def test_each_round_is_one_job_array_and_the_cells_match_inline(plugin: Path, write_suite,  # noqa: F811
                                                                 tmp_path: Path, jobs_to_cancel: list[str]  # noqa: F811
                                                                 ) -> None:
    suite = slurm_suite(plugin, seeds={"start": 3, "max": 4, "step": 1},
                        dataset={"name": "synthetic", "num_train": 256, "num_test": 128, "channels": 1, "size": 32,
                                 "validation": 64})
    path = write_suite(suite)
    on_slurm, inline = tmp_path / "slurm", tmp_path / "inline"
    assert main(["run", str(path), "--results", str(on_slurm), "--executor", "slurm", "--until-decided",
                 "--quiet"]) == 0
    assert main(["run", str(path), "--results", str(inline), "--until-decided", "--quiet"]) == 0
    cells = json.loads((on_slurm / "tiny" / "manifest.json").read_text())["cells"]
    assert cells == json.loads((inline / "tiny" / "manifest.json").read_text())["cells"]
    rounds = 1 + (max(len(seeds) for seeds in cells.values()) - 3)  # start 3, one seed a round
    submissions = read_submissions(on_slurm, "tiny")
    assert len(submissions) == rounds  # one job array per round
    assert sum(len(s["tasks"]) for s in submissions) == sum(len(seeds) for seeds in cells.values())  # 1 LR
