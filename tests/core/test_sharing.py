"""A results folder shared with colleagues: files as the umask says, and a reader who is not the owner."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from bench.store import file_lock, save_checkpoint, write_json
from tests.conftest import PROJECT, tiny_suite

NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
two_users = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                               reason="needs root and setpriv to act as a second user")


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_files_are_written_as_the_umask_says(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        write_json(tmp_path / "result.json", {"status": "ok"})
        save_checkpoint(tmp_path / "model.pt", {"w": 1})
        with file_lock(tmp_path / ".lock", blocking=True):
            pass
    finally:
        os.umask(old)
    for name in ("result.json", "model.pt", "model.pt.sha256", ".lock"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A folder every user may enter (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="bench-shared-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def bench(*args: str, user: list[str] | None = None, home: Path | None = None) -> subprocess.CompletedProcess:
    """``python bench.py ARGS`` as root, or as nobody (``user=NOBODY``) with its own HOME."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if home is not None:
        env.update(HOME=str(home), MPLCONFIGDIR=str(home / "mpl"))
    return subprocess.run([*(user or []), sys.executable, str(PROJECT / "bench.py"), *args], cwd=PROJECT,
                          capture_output=True, text=True, env=env, timeout=600)


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@two_users
@pytest.mark.slow
def test_a_colleague_gets_the_same_status_verify_and_report(shared_tmp: Path) -> None:
    suite = tiny_suite(methods=["l1"], retrain={"epochs": 1, "batch_size": 64, "lr": 0.05})
    suite_file = shared_tmp / "tiny.yaml"
    suite_file.write_text(yaml.safe_dump(suite))
    suite_file.chmod(0o644)
    results, home = shared_tmp / "results", shared_tmp / "home"
    home.mkdir(mode=0o777)
    home.chmod(0o777)
    old = os.umask(0o022)
    try:
        assert bench("run", str(suite_file), "--results", str(results), "--quiet").returncode == 0
    finally:
        os.umask(old)

    for command in (["status", str(suite_file)], ["verify"]):
        mine = bench(*command, "--results", str(results))
        theirs = bench(*command, "--results", str(results), user=NOBODY, home=home)
        assert (theirs.returncode, theirs.stdout) == (mine.returncode, mine.stdout), theirs.stderr
        assert "Traceback" not in theirs.stderr and "corrupt" not in theirs.stdout

    # The reader may not write the results folder: one error line that says what to do, nothing written.
    before = files(results)
    refused = bench("report", "--results", str(results), user=NOBODY, home=home)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1].startswith("error: directory ") and "--out DIR" in refused.stderr
    assert files(results) == before
    # ... and with --out gets the very report its owner gets.
    assert bench("report", "--results", str(results), "--out", str(shared_tmp / "owner")).returncode == 0
    reader = bench("report", "--results", str(results), "--out", str(home / "out"), user=NOBODY, home=home)
    assert reader.returncode == 0, reader.stderr
    def content(path: Path) -> list[str]:  # all but the line that says when it was written
        return [line for line in path.read_text().splitlines() if not line.startswith("Written ")]

    for name in ("runs.csv", "summary.md", "tables/status.csv"):
        assert content(home / "out/tiny/report" / name) == content(shared_tmp / "owner/tiny/report" / name), name

    # A result the reader may not read is "unreadable (permission)", never corrupt, never a traceback.
    result = next(results.glob("tiny/runs/*/result.json"))
    result.chmod(0o600)
    status = bench("status", str(suite_file), "--results", str(results), user=NOBODY, home=home)
    verify = bench("verify", "--results", str(results), user=NOBODY, home=home)
    report = bench("report", "--results", str(results), "--out", str(home / "out2"), user=NOBODY, home=home)
    for done in (status, verify, report):
        assert "Traceback" not in done.stderr and "corrupt" not in done.stdout + done.stderr
    assert f"{result.parent.name}  l1" in status.stdout and "unreadable" in status.stdout
    assert f"unreadable {result}: unreadable (permission)" in verify.stdout
    assert report.returncode == 0 and "unreadable" in (home / "out2/tiny/report/runs.csv").read_text()


@two_users
def test_a_result_another_user_may_not_read_is_unreadable_not_corrupt(shared_tmp: Path) -> None:
    from bench.report.synthetic import write_synthetic_results

    results = shared_tmp / "results"
    paths = write_synthetic_results(results, "s", ["l1"], [0.5], [0.01], [0, 1])
    for folder in [results, *results.rglob("*")]:
        folder.chmod(0o755 if folder.is_dir() else 0o644)
    paths[0].chmod(0o600)
    verify = bench("verify", "--results", str(results), user=NOBODY, home=shared_tmp)
    assert verify.returncode == 1 and "Traceback" not in verify.stderr and "corrupt" not in verify.stdout
    assert verify.stdout.splitlines() == [f"unreadable {paths[0]}: unreadable (permission)",
                                          "verify: 2 runs, 0 dense models, 0 pruned models checked; 1 unreadable."]
    fixed = bench("verify", "--fix", "--results", str(results), user=NOBODY, home=shared_tmp)
    assert "Traceback" not in fixed.stderr and paths[0].exists()  # nothing moved aside: only its owner can help
