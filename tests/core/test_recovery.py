"""Faults recovered: corrupt caches and checkpoints made again, corrupt results shown, verify and gc, hostile YAML."""
from __future__ import annotations

import json
import logging
import shutil
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from bench.cli import main
from bench.config import ConfigError, load_suite
from tests.conftest import tiny_suite

SUITE = tiny_suite(methods=["l1"], retrain={"epochs": 2, "batch_size": 64, "lr": [0.05, 0.01], "schedule": "constant"},
                   latency={"enabled": False}, storage={"keep_checkpoints": True},
                   # one run is redone here after its LR sibling finished: alone, it trains separately, which equals
                   # its fused run only to rounding (docs/fusion.md); these tests compare bit for bit
                   execution={"fuse": "off"})


def run(path: Path, results: Path, *extra: str) -> int:
    return main(["run", str(path), "--results", str(results), "--quiet", *extra])


def results_of(results: Path, suite: str = "tiny") -> dict[str, dict[str, Any]]:
    return {p.parent.name: json.loads(p.read_text()) for p in (results / suite / "runs").glob("*/result.json")}


def numbers(result: dict[str, Any]) -> dict[str, Any]:
    history = [{k: v for k, v in row.items() if k != "seconds"} for row in result["history"]["retrain"]]
    return {"metrics": {k: v for k, v in result["metrics"].items() if k != "timings"}, "history": history,
            "dense": result["dense_sha256"]}


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> tuple[Path, dict[str, dict[str, Any]]]:
    """The suite at ratios 0.5 and 0.3 run on a fresh cache: what every recovered run must equal."""
    root = tmp_path_factory.mktemp("fresh")
    path = root / "suite.yaml"
    path.write_text(json.dumps(dict(SUITE, prune={"ratios": [0.5, 0.3]})))
    assert run(path, root / "r") == 0
    return path, results_of(root / "r")


def test_a_truncated_dense_model_is_moved_aside_and_made_again(fresh, tmp_path: Path, write_suite, caplog) -> None:
    path, expected = fresh
    first = write_suite(SUITE)
    assert run(first, tmp_path) == 0  # ratio 0.5: trains the dense model
    (dense,) = tmp_path.glob("_dense/*/model.pt")
    sha = (dense.parent / "model.pt.sha256").read_text().strip()
    dense.write_bytes(dense.read_bytes()[: dense.stat().st_size // 2])
    with caplog.at_level(logging.WARNING):
        assert run(path, tmp_path) == 0  # ratio 0.3 needs the dense model again
    (aside,) = (p for p in dense.parent.glob("model.pt.corrupt-*") if p.suffix != ".sha256")
    assert str(aside) in caplog.text and "was corrupt" in caplog.text
    got = results_of(tmp_path)
    assert {k: numbers(v) for k, v in got.items()} == {k: numbers(v) for k, v in expected.items()}
    assert {r["dense_sha256"] for r in got.values()} == {sha}  # made again bit-identical on the CPU


def test_corrupt_pruned_model_and_checkpoint_are_made_again(fresh, tmp_path: Path, write_suite, caplog) -> None:
    _, expected = fresh
    path = write_suite(SUITE)
    assert run(path, tmp_path) == 0
    (pruned,) = tmp_path.glob("_pruned/*/pruned.pt")
    pruned.write_bytes(b"\0" * 100)
    done = results_of(tmp_path)
    interrupted = next(iter(done))  # as a killed run leaves it: running, with a checkpoint (here a torn one)
    result = tmp_path / "tiny" / "runs" / interrupted / "result.json"
    result.write_text(json.dumps(dict(done[interrupted], status="running")))
    checkpoint = result.parent / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:500])
    with caplog.at_level(logging.WARNING):
        assert run(path, tmp_path) == 0
    assert "checkpoint.pt was corrupt" in caplog.text and "retraining restarts" in caplog.text
    assert "pruned.pt was corrupt" in caplog.text
    got = results_of(tmp_path)[interrupted]
    assert got["status"] == "ok" and numbers(got) == numbers(expected[interrupted])
    assert [bool(a.get("finished")) for a in got["attempts"]] == [True, True]  # the first was recorded before


def test_a_corrupt_result_is_shown_as_corrupt_by_status_and_the_report(tmp_path: Path, write_suite, capsys) -> None:
    from bench.report.build import write_reports

    path = write_suite(SUITE)
    assert run(path, tmp_path) == 0
    victim = sorted((tmp_path / "tiny" / "runs").glob("*/result.json"))[0]
    victim.write_text('{"status": "ok", "metr')
    capsys.readouterr()
    assert main(["status", str(path), "--results", str(tmp_path), "--quiet"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(victim.parent.name))
    assert " corrupt " in line and str(victim) in line and "line 1 column" in line
    write_reports(tmp_path, workers=1)
    tables = tmp_path / "tiny" / "report" / "tables"
    assert (tables / "status.csv").read_text().splitlines() == ["method,corrupt,ok,total", "l1,1,1,2"]
    problems = (tables / "problems.csv").read_text()
    assert victim.parent.name in problems and ",corrupt," in problems and str(victim) in problems


def test_verify_fix_and_gc(tmp_path: Path, write_suite, capsys) -> None:
    path = write_suite(SUITE)
    results = tmp_path / "r"
    assert run(path, results, "--set", "name=other", "--set", "prune.ratios=[0.3]") == 0
    shutil.rmtree(results / "other")  # its pruned model (ratio 0.3) is now referred to by nothing
    assert run(path, results) == 0
    done = results_of(results)
    victim = next(iter(done))
    rd = results / "tiny" / "runs" / victim
    (rd / "result.json").write_text(json.dumps(dict(done[victim], status="running")))  # interrupted ...
    (rd / "checkpoint.pt").write_bytes((rd / "checkpoint.pt").read_bytes()[:300])  # ... with a torn checkpoint
    capsys.readouterr()
    assert main(["verify", "--results", str(results)]) == 1
    out = capsys.readouterr().out
    assert f"corrupt   {rd / 'checkpoint.pt'}" in out and "1 corrupt, 1 orphaned" in out
    assert main(["verify", "--results", str(results), "--fix"]) == 0
    assert not (rd / "checkpoint.pt").exists() and list(rd.glob("checkpoint.pt.corrupt-*"))
    assert run(path, results) == 0
    assert main(["verify", "--results", str(results)]) == 0
    assert numbers(results_of(results)[victim]) == numbers(done[victim])

    capsys.readouterr()
    assert main(["gc", "--results", str(results), "--dry-run"]) == 0
    listed = capsys.readouterr().out
    before = {p for p in results.rglob("*") if p.is_file()}
    assert main(["gc", "--results", str(results)]) == 0
    removed = before - {p for p in results.rglob("*") if p.is_file()}
    assert capsys.readouterr().out.replace("deleted", "would delete").replace("freed", "would free") == listed
    assert {p.name for p in removed} >= {"model.pt", "pruned.pt", "dense.json"}  # the caches, and what was set aside
    assert (rd / "checkpoint.pt").exists() and not list(rd.glob("*.corrupt-*"))  # the suite keeps checkpoints
    assert all(not (p.name in ("result.json", "model.pt") and p.parent.parent.name == "runs") for p in removed)
    assert not (results / "_dense").exists() or not any((results / "_dense").iterdir())
    finished = results_of(results)
    assert run(path, results) == 0
    assert results_of(results) == finished and not list(results.glob("_dense/*/model.pt"))  # nothing trained


def bomb(levels: int) -> str:
    """A YAML alias bomb: ``levels`` lines, each a list of nine aliases to the line above (9**levels values)."""
    lines = ['x0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"x{k}: &a{k} [{','.join([f'*a{k - 1}'] * 9)}]" for k in range(1, levels)]
    return "\n".join(lines) + f"\nseeds: *a{levels - 1}\n"


def test_an_alias_bomb_is_refused_before_it_is_built(tmp_path: Path, write_suite, capsys) -> None:
    import yaml

    path = write_suite(bomb(9) + yaml.safe_dump({k: v for k, v in SUITE.items() if k != "seeds"}))
    tracemalloc.start()
    try:
        assert main(["plan", str(path), "--quiet"]) == 2
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20e6  # bytes Python allocated: the 9**9 values were never built
    assert "expands, through its aliases" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="alias inside the value it names"):
        load_suite(write_suite("name: &a [*a]\n", "self.yaml"))
