"""Errors that blame the true cause: one `error:` line, exit 2, no traceback, nothing written."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bench.cli import main
from tests.conftest import tiny_suite


def refused(capsys, tmp_path: Path, *argv: str) -> str:
    """Run the CLI, which must refuse with exit 2 and write nothing; its error line(s)."""
    results = tmp_path / "results"
    assert main([*argv, "--results", str(results), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert not results.exists()
    return err


def test_a_long_list_without_aliases_is_not_blamed_on_aliases(write_suite, tmp_path: Path, capsys) -> None:
    path = write_suite(yaml.safe_dump(tiny_suite(seeds=list(range(100_001)))))
    err = refused(capsys, tmp_path, "run", str(path))
    assert "through its aliases" not in err and "fewer seeds" in err
    assert "holds more than 100,000 values, the limit" in err
    bomb = "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(5))
    assert "through its aliases (*name)" in refused(capsys, tmp_path, "run", str(write_suite(bomb, "bomb.yaml")))


@pytest.mark.parametrize(("override", "expected"), [
    ("retrian.epochs=2", "error: --set 'retrian.epochs=2': unknown key 'retrian'. Did you mean 'retrain'?"),
    ("retrain.epochs=two", "error: --set 'retrain.epochs=two': 'retrain.epochs' is 'two'; it must be an integer."),
])
def test_set_problems_are_blamed_on_the_set(write_suite, tmp_path: Path, capsys, override: str,
                                            expected: str) -> None:
    path = write_suite(tiny_suite())
    err = refused(capsys, tmp_path, "run", str(path), "--set", override)
    assert err.startswith(expected) and str(path) not in err
    # a file that is wrong itself is still blamed, even with a --set beside it
    bad = write_suite(tiny_suite(seeds="zero"), "bad.yaml")
    assert refused(capsys, tmp_path, "run", str(bad), "--set", override).startswith(f"error: {bad}: ")


def test_a_problem_found_on_expanding_is_blamed_on_the_set_that_made_it(write_suite, tmp_path: Path,
                                                                        capsys) -> None:
    """The backend names are checked where the suite expands (after load_suite): a bad --set is still its cause."""
    path = write_suite(tiny_suite())
    err = refused(capsys, tmp_path, "plan", str(path), "--set", "latency.backends=[eager,tvm]")
    assert err.startswith("error: --set 'latency.backends=[eager,tvm]': latency.backends: unknown backend 'tvm'")
    assert str(path) not in err
    bad = write_suite(tiny_suite(latency={"backends": ["eager", "tvm"]}), "bad.yaml")
    assert refused(capsys, tmp_path, "plan", str(bad), "--set", "seeds=[0]").startswith(
        f"error: {bad}: latency.backends: unknown backend 'tvm'")


def test_the_latency_eager_problem_names_its_key_once(write_suite, tmp_path: Path, capsys) -> None:
    err = refused(capsys, tmp_path, "plan", str(write_suite(tiny_suite())), "--set", "latency.backends=[onnxruntime]")
    assert "'latency': backends ['onnxruntime'] leaves out 'eager'" in err and "latency.backends: [" not in err


@pytest.mark.parametrize("command", ["plan", "run"])
def test_a_missing_data_root_is_refused_by_plan_as_by_run(write_suite, tmp_path: Path, capsys, command: str) -> None:
    path = write_suite(tiny_suite())
    err = refused(capsys, tmp_path, command, str(path), "--data-root", str(tmp_path / "nowhere"))
    assert f"data root '{tmp_path / 'nowhere'}' does not exist" in err and "run id" not in err


def test_a_users_corrupt_checkpoint_gets_advice_for_a_users_file(write_suite, tmp_path: Path, capsys) -> None:
    checkpoint = tmp_path / "mine.pt"
    checkpoint.write_bytes(b"PK\x03\x04 not really a zip archive, cut short " * 3)
    path = write_suite(tiny_suite(pretrain={"checkpoint": str(checkpoint)}))
    err = refused(capsys, tmp_path, "run", str(path))
    assert err.startswith(f"error: pretrain.checkpoint '{checkpoint}' cannot be loaded (")
    assert "It is your file" in err and "verify --fix" not in err and "delete it" not in err
    problem = err.split("cannot be loaded (", 1)[1].split("). It is your file")[0]
    assert problem.endswith(" ...") or problem.rstrip(".")[-1].isalnum()  # whole words, or a clear cut


def test_directories_and_files_are_called_what_they_are(write_suite, tmp_path: Path, capsys) -> None:
    err = refused(capsys, tmp_path, "run", str(tmp_path))
    assert err.startswith(f"error: suite file '{tmp_path}' is a directory.")
    afile = tmp_path / "afile"
    afile.write_text("")
    assert main(["run", str(write_suite(tiny_suite())), "--results", str(afile), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: '{afile}' is not a directory;") and afile.read_text() == ""


def test_a_plan_beyond_ten_thousand_runs_asks_for_yes(write_suite, tmp_path: Path, capsys) -> None:
    path = write_suite(tiny_suite(seeds=list(range(2_501))))  # 2 methods x 1 ratio x 2 LRs x 2,501 seeds
    err = refused(capsys, tmp_path, "run", str(path))
    assert err.startswith(f"error: {path}: 10,004 runs planned, more than 10,000 (2 methods x 1 ratios x 2 LRs x "
                          "2501 seeds); pass --yes")
    assert main(["plan", str(path), "--results", str(tmp_path / "results")]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith(", 10004 runs")


def test_a_library_message_is_cut_at_a_word_never_inside_one() -> None:
    from bench.store import first_line

    words = "PytorchStreamReader failed reading zip archive: failed finding central directory " * 6
    cut = first_line(words + "\nsecond line", limit=100)
    assert cut.endswith(" ...") and len(cut) <= 104 and words.startswith(cut.removesuffix(" ..."))
    assert words[len(cut.removesuffix(" ..."))] == " "  # the next character was a space: no word was split
    assert first_line("short message\nmore") == "short message"
