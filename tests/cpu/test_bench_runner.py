"""cuflash bench: the sweep, cuflash's correctness check and cli.run, end to end on the CPU.

CuPy, the GPU timers and the ceilings are replaced: the runner works on NumPy
arrays with a stand-in for cuflash built from cuflash.reference, timed with
host-clock "events".  Everything else (the check with the real reference and
accuracy rule, the rows, ratios, reports and exit codes) is the real code.
"""
import argparse
import json
import time
import types

import numpy
import pytest

from cuflash import reference
from cuflash.bench import cli, configs, runner, timing


class _Event:
    def record(self):
        self.t = time.perf_counter()


class FakeTimers:
    flush_bytes = 0

    def __init__(self):
        self.flushes = 0

        def flush():
            self.flushes += 1
        self.cupy = timing.EventTimer(new_event=_Event, elapsed_ms=lambda s, e: (e.t - s.t) * 1e3,
                                      synchronize=lambda: None, flush=flush)

    def torch(self):
        return self.cupy


def fake_cuflash(error=0.0, backward=True):
    """attention / attention_backward computed by the reference in the input dtype, plus ``error``."""
    lib = types.SimpleNamespace(calls=0)

    def attention(q, k, v, *, causal=False, return_lse=False):
        lib.calls += 1
        out, lse = reference.attention_forward(q, k, v, causal=causal, precision="lowp")
        out = out + error
        return (out, lse) if return_lse else out

    def attention_backward(dout, q, k, v, out, lse, *, causal=False):
        dq, dk, dv, _ = reference.attention_backward(dout, q, k, v, causal=causal, precision="lowp")
        return dq, dk + error, dv

    lib.attention = attention
    if backward:
        lib.attention_backward = attention_backward
    return lib


class FakePeer:
    clock = "cuda-events"
    uses_torch = False

    def __init__(self, name, ms):
        self.name, self.ms = name, ms

    def measure(self, p, *, warmup, rep):
        if self.ms is None:
            raise RuntimeError("No available kernel.\nsecond line")
        return {"first_call_ms": 5.0, "samples_ms": [self.ms] * rep}


CEILINGS = {"matmul_tflops": 800.0, "copy_tbps": 4.0, "matmul_source": "fake"}


@pytest.fixture
def fake_gpu(monkeypatch):
    """Patch the GPU-only pieces; returns a setter for the cuflash stand-in."""
    state = {"lib": fake_cuflash(), "timers": None}

    def make_timers(nbytes):
        state["timers"] = FakeTimers()
        return state["timers"]
    monkeypatch.setattr(timing, "Timers", make_timers)
    monkeypatch.setattr(timing, "flush_bytes", lambda: 0)
    monkeypatch.setattr(timing, "measure_ceilings", lambda timers, use_torch: dict(CEILINGS))
    monkeypatch.setattr(timing, "gpu_problem", lambda: None)
    monkeypatch.setattr(runner, "environment", lambda: {"gpu": "fake GPU"})
    real = runner.CuflashBench
    monkeypatch.setattr(runner, "CuflashBench", lambda timers: real(timers, xp=numpy, lib=state["lib"]))
    monkeypatch.setattr(runner.peers_mod, "make_peers",
                        lambda names, timers: ([FakePeer("fast", 1e-3), FakePeer("broken", None)],
                                               ["peer gone skipped: not installed"]))
    monkeypatch.setattr(cli, "_memory_problem", lambda points: None)
    return state


def small_points(modes=("fwd", "bwd", "fwd+bwd"), nheads=4, nheads_kv=2, dtype="bf16"):
    sweep = configs.Sweep(dtypes=[dtype], headdims=[32], seqlens=[48, 64], causals=[False, True], modes=list(modes),
                          batch=2, nheads=nheads, nheads_kv=nheads_kv)
    return sweep.points()


def test_sweep_rows(fake_gpu):
    pts = small_points()
    result = runner.run_sweep(pts, peer_names=["fast", "broken"], warmup=1, rep=4, check=True, progress=True)
    rows = result["rows"]
    assert len(rows) == len(pts) == 12
    assert fake_gpu["timers"].flushes == 4 * 12            # one L2 flush per cuflash repetition
    for p, row in zip(pts, rows):
        assert row["label"] == p.label and row["mode"] == p.mode
        ours = row["results"]["cuflash"]
        assert ours["status"] == "ok", ours
        assert len(ours["samples_ms"]) == 4
        assert ours["ms_min"] <= ours["ms_q1"] <= ours["ms"] <= ours["ms_q3"] <= ours["ms_max"]
        assert ours["rate"] == pytest.approx(configs.rate(row["work"]["amount"], ours["ms"]))
        assert ours["pct_ceiling"] == pytest.approx(100 * ours["rate"] / 800.0)
        assert row["check"]["status"] == "pass", row["check"]
        assert set(row["check"]["tensors"]) == ({"out"} if p.mode == "fwd" else {"dq", "dk", "dv"})
        fast = row["results"]["fast"]
        assert fast["ms"] == pytest.approx(1e-3)
        assert row["ratios"]["fast"] == pytest.approx(ours["rate"] / fast["rate"])
        assert row["results"]["broken"] == {"status": "error", "reason": "RuntimeError: No available kernel.",
                                            "rate": None, "ms": None}
        assert row["ratios"]["broken"] is None
    assert result["meta"]["peers"] == ["fast", "broken"]
    assert "peer gone skipped: not installed" in result["meta"]["notes"]
    assert not report_failures(result)


def report_failures(result):
    from cuflash.bench import report
    return report.failures(result)


@pytest.mark.parametrize("nheads, nheads_kv, dtype", [(4, 4, "bf16"), (4, 2, "bf16"), (8, 1, "bf16"), (4, 2, "fp16")])
def test_check_catches_a_wrong_gradient_whatever_the_gqa_group(fake_gpu, nheads, nheads_kv, dtype):
    # a correct dk passes (so the check slices whole GQA groups), a wrong one fails
    pts = small_points(modes=("bwd",), nheads=nheads, nheads_kv=nheads_kv, dtype=dtype)[:1]
    ok = runner.run_sweep(pts, peer_names=[], warmup=0, rep=1, check=True, progress=False)
    assert ok["rows"][0]["check"]["status"] == "pass", ok["rows"][0]["check"]
    fake_gpu["lib"] = fake_cuflash(error=0.05)
    bad = runner.run_sweep(pts, peer_names=[], warmup=0, rep=1, check=True, progress=False)
    assert bad["rows"][0]["check"]["status"] == "fail"
    assert bad["rows"][0]["check"]["message"].startswith("AssertionError: dk: max error")


def test_no_check(fake_gpu):
    fake_gpu["lib"] = fake_cuflash(error=1.0)
    result = runner.run_sweep(small_points(modes=("fwd",)), peer_names=[], warmup=0, rep=1, check=False,
                              progress=False)
    assert {r["check"]["status"] for r in result["rows"]} == {"skipped"}


def test_backward_missing(fake_gpu):
    fake_gpu["lib"] = fake_cuflash(backward=False)
    result = runner.run_sweep(small_points(modes=("fwd", "bwd")), peer_names=[], warmup=0, rep=2, check=True,
                              progress=False)
    by_mode = {m: [r for r in result["rows"] if r["mode"] == m] for m in ("fwd", "bwd")}
    assert all(r["results"]["cuflash"]["status"] == "ok" for r in by_mode["fwd"])
    for r in by_mode["bwd"]:
        assert r["results"]["cuflash"]["status"] == "skipped"
        assert "backward not available" in r["results"]["cuflash"]["reason"]
        assert r["results"]["fast"]["status"] == "ok"           # peers still measured
        assert r["ratios"]["fast"] is None
    assert any("backward not available" in n for n in result["meta"]["notes"])


def test_inputs_are_shared_across_modes():
    bench = runner.CuflashBench(FakeTimers(), xp=numpy, lib=fake_cuflash())
    fwd, bwd, fwd_causal = small_points(modes=("fwd", "bwd"))[:3]
    first = bench.inputs(fwd)
    assert bench.inputs(bwd) is first
    assert bench.inputs(fwd_causal) is not first


def _args(*argv):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(list(argv))


SMALL = ("--headdim", "32", "--seqlen", "64", "--nheads", "4", "--batch", "1", "--causal", "both",
         "--mode", "fwd,bwd", "--warmup", "0", "--rep", "2")


def test_run_writes_outputs_and_exit_0(fake_gpu, tmp_path, capsys):
    js, cs = tmp_path / "r.json", tmp_path / "r.csv"
    assert cli.run(_args(*SMALL, "--json", str(js), "--csv", str(cs), "--no-progress")) == 0
    out = capsys.readouterr().out
    assert "fast" in out and "pass" in out and "FAILED" not in out
    data = json.loads(js.read_text())
    assert len(data["rows"]) == 4
    assert data["meta"]["ceilings"]["matmul_tflops"] == 800.0
    assert cs.read_text().count("\n") == 5


def test_run_exit_1_and_loud_on_failed_check(fake_gpu, capsys):
    fake_gpu["lib"] = fake_cuflash(error=0.05)
    assert cli.run(_args(*SMALL, "--no-progress")) == 1
    captured = capsys.readouterr()
    assert "CORRECTNESS CHECK(S) FAILED" in captured.out
    assert "FAIL !!!" in captured.out
    assert "correctness check(s) failed" in captured.err


def test_run_rejects_missing_output_folder(fake_gpu, tmp_path, capsys):
    assert cli.run(_args(*SMALL, "--json", str(tmp_path / "nope" / "r.json"))) == 2
    assert "does not exist" in capsys.readouterr().err
