"""cuflash bench without a GPU: --help works, a run says why it cannot run and exits 2."""
import argparse
import os
import subprocess
import sys

import pytest

from cuflash.bench import cli, timing

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _gpu_visible():
    return timing.gpu_problem() is None


def _run_module(*argv):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "cuflash.bench", *argv], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=120)


def test_help_works_anywhere():
    proc = _run_module("--help")
    assert proc.returncode == 0, proc.stderr
    for option in ("--preset", "--quick", "--seqlen", "--total-tokens", "--hidden", "--peers", "--json",
                   "--plot", "--no-check"):
        assert option in proc.stdout


@pytest.mark.skipif(_gpu_visible(), reason="a GPU is visible here; this checks the message without one")
def test_module_without_gpu_exits_2_with_one_line():
    proc = _run_module("--quick")
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("cuflash bench: no GPU:") and "NVIDIA GPU" in lines[0]


def _args(*argv):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.mark.parametrize("count", [0, RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")])
def test_run_without_device_exits_2(monkeypatch, capsys, count):
    cupy = pytest.importorskip("cupy")

    def device_count():
        if isinstance(count, Exception):
            raise count
        return count
    monkeypatch.setattr(cupy.cuda.runtime, "getDeviceCount", device_count)
    monkeypatch.setattr(cupy.cuda.runtime, "driverGetVersion", lambda: 12020)  # a driver, but no device
    assert cli.run(_args("--quick")) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert "no GPU" in lines[0] and ("device count 0" in lines[0] or "cudaErrorNoDevice" in lines[0])


def test_bad_sweep_exits_2_before_touching_the_gpu(monkeypatch, capsys):
    monkeypatch.setattr(timing, "gpu_problem", lambda: pytest.fail("the GPU was probed"))
    assert cli.run(_args("--headdim", "96", "--hidden", "2048")) == 2
    assert "not a multiple of head dim 96" in capsys.readouterr().err
