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
