"""``bench.py selftest``: what CI runs of it (``--quick --device cpu``), and its refusal where no GPU is visible."""
from __future__ import annotations

import pytest
import torch

from bench.cli import main


def test_quick_selftest_passes_on_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    """The command a cluster user runs first, as CI runs it: every check prints one PASS line (data parallelism is
    skipped without --nproc), the exit status is 0, and logging is left as it was."""
    import logging

    level = logging.getLogger("bench").level
    assert main(["selftest", "--quick", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    checks = {line[6:30].strip(): line[:4] for line in lines[:-1]}
    assert checks == {"speed resnet20": "PASS", "speed mlp7_relu": "PASS", "memory flat": "PASS",
                      "latency synchronised": "PASS", "jsv tf32 off vs cpu": "PASS", "data parallel": "SKIP",
                      "local pool": "PASS"}
    assert "compile" in next(line for line in lines if "mlp7_relu" in line)  # --quick compiles the MLP only
    assert "compile" not in next(line for line in lines if "speed resnet20" in line)
    assert lines[-1].startswith("selftest on cpu (quick): 6 passed, 0 failed, 1 skipped")
    assert logging.getLogger("bench").level == level


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: --device cuda would run the GPU self-test")
def test_selftest_on_cuda_without_a_gpu_says_so_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["selftest", "--device", "cuda"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith("error: selftest --device cuda: no GPU is visible here")


def test_the_roster_leaves_out_methods_its_worker_processes_cannot_load(tmp_path, monkeypatch) -> None:
    """A method registered by other code in this process (a test's subclass) or by a ``--plugin`` file is not one the
    self-test's pool workers register, so the roster never picks it, however it declares itself; built-ins stay."""
    from bench.cli.selftest import Roster
    from bench.core.registry import METHODS
    from bench.plugins import load_builtin, load_plugin

    load_builtin()
    state = METHODS.snapshot()
    builtin = Roster.registered(quick=True)
    tpp = next(METHODS.get(n) for n in builtin.phased)
    plugin = tmp_path / "phased_plugin.py"
    plugin.write_text(f"from bench import register_method\nfrom {tpp.__module__} import {tpp.__name__} as Base\n\n\n"
                      "@register_method('zz_from_a_file')\nclass FromFile(Base):\n    pass\n")
    try:
        METHODS.add("zz_in_process", type("InProcess", (tpp,), {"selftest_options": dict(tpp.selftest_options)}))
        load_plugin(str(plugin))
        assert {"zz_in_process", "zz_from_a_file"} <= set(METHODS)
        for quick in (True, False):
            roster = Roster.registered(quick)
            assert "zz_in_process" not in roster.names and "zz_from_a_file" not in roster.names
        assert Roster.registered(quick=True) == builtin
    finally:
        METHODS.restore(state)
