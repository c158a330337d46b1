"""cuflash bench: the sweep, cuflash's correctness check and cli.run, end to end on the CPU.

CuPy, the GPU timers and the ceilings are replaced: the runner works on NumPy
arrays with a stand-in for cuflash built from cuflash.reference, timed with
host-clock "events".  Everything else (the check with the real reference and
accuracy rule, the rows, ratios, reports and exit codes) is the real code.
"""
import argparse
import dataclasses
import inspect
import json
import time
import types

import numpy
import pytest

from cuflash import reference
from cuflash.bench import cli, configs, peers, report, runner, timing


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


def fake_cuflash(error=0.0, backward=True, ignore=(), pages_in_order=False):
    """attention / attention_backward computed by the reference in the input dtype, plus ``error``;
    the options named in ``ignore`` are dropped (a kernel that gets a variant wrong).
    attention_with_kvcache gathers a paged cache through its block table (``pages_in_order``: a
    kernel that ignores the table and reads each sequence's pages from the pool in order)."""
    lib = types.SimpleNamespace(calls=0, options=[], kvcache_calls=[], varlen_checks=[])

    def attention(q, k, v, *, return_lse=False, **options):
        lib.calls += 1
        lib.options.append(options)
        options = {name: value for name, value in options.items() if name not in ignore}
        out, lse = reference.attention_forward(q, k, v, precision="lowp", **options)
        out = out + error
        return (out, lse) if return_lse else out

    def attention_backward(dout, q, k, v, out, lse, **options):
        options = {name: value for name, value in options.items() if name not in ignore}
        dq, dk, dv = reference.attention_backward(dout, q, k, v, precision="lowp", **options)[:3]
        return dq, dk + error, dv

    def attention_varlen(q, k, v, cu_q, cu_k, max_q, max_k, *, return_lse=False, check_lengths=True, **options):
        lib.calls += 1
        lib.varlen_checks.append(check_lengths)
        lib.options.append(options)
        options = {name: value for name, value in options.items() if name not in ignore}
        assert max_q == int(numpy.diff(cu_q).max()) and max_k == int(numpy.diff(cu_k).max())
        out, lse = reference.attention_forward_varlen(q, k, v, cu_q, cu_k, precision="lowp", **options)
        out = out + error
        return (out, lse) if return_lse else out

    def attention_varlen_backward(dout, q, k, v, out, lse, cu_q, cu_k, max_q, max_k, check_lengths=True, **options):
        lib.varlen_checks.append(check_lengths)
        options = {name: value for name, value in options.items() if name not in ignore}
        dq, dk, dv = reference.attention_backward_varlen(dout, q, k, v, cu_q, cu_k, precision="lowp", **options)[:3]
        return dq, dk + error, dv

    def attention_with_kvcache(q, k_cache, v_cache, k=None, v=None, *, cache_seqlens=None, block_table=None,
                               check_indices=True, **options):
        lib.calls += 1
        lib.kvcache_calls.append({"cache_seqlens": cache_seqlens, "block_table": block_table, **options,
                                  **({} if check_indices else {"check_indices": False})})
        if block_table is not None:
            if pages_in_order:
                block_table = numpy.arange(block_table.size).reshape(block_table.shape)
            batch = q.shape[0]
            k_cache, v_cache = (c[block_table].reshape(batch, -1, *c.shape[2:]) for c in (k_cache, v_cache))
        out = reference.attention_with_kvcache(q, k_cache, v_cache, cache_seqlens=cache_seqlens, precision="lowp",
                                               **options)[0]
        return out + error

    lib.attention = attention
    lib.attention_varlen = attention_varlen
    lib.attention_with_kvcache = attention_with_kvcache
    if backward:
        lib.attention_backward = attention_backward
        lib.attention_varlen_backward = attention_varlen_backward
    return lib


class FakePeer:
    clock = "cuda-events"
    uses_torch = False

    def __init__(self, name, ms):
        self.name, self.ms = name, ms
        self.measured = []

    def measure(self, p, *, warmup, rep):
        self.measured.append(p)
        if self.ms is None:
            raise RuntimeError("No available kernel.\nsecond line")
        return {"first_call_ms": 5.0, "samples_ms": [self.ms] * rep}


CEILINGS = {"matmul_tflops": 800.0, "copy_tbps": 4.0, "matmul_source": "fake"}


@pytest.fixture
def fake_gpu(monkeypatch):
    """Patch the GPU-only pieces; returns a setter for the cuflash stand-in."""
    state = {"lib": fake_cuflash(), "timers": None, "peers": [FakePeer("fast", 1e-3), FakePeer("broken", None)]}

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
                        lambda names, timers: (state["peers"], ["peer gone skipped: not installed"]))
    monkeypatch.setattr(cli, "_memory_problem", lambda points: None)
    return state


def small_points(modes=("fwd", "bwd", "fwd+bwd"), nheads=4, nheads_kv=2, dtype="bf16", **variant):
    sweep = configs.Sweep(dtypes=[dtype], headdims=[32], seqlens=[48, 64], causals=[False, True], modes=list(modes),
                          batch=2, nheads=nheads, nheads_kv=nheads_kv, **variant)
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


def test_sigterm_keeps_the_rows_measured_so_far(fake_gpu, tmp_path, capsys):
    # `timeout` sends SIGTERM: the sweep stops as on Ctrl-C, writes the rows it has and exits 130
    import os
    import signal

    lib = fake_gpu["lib"]
    forward = lib.attention

    def attention(*args, **options):
        if options.get("causal"):        # point 3 of 4 (full fwd, full bwd, causal fwd, causal bwd)
            os.kill(os.getpid(), signal.SIGTERM)
        return forward(*args, **options)
    lib.attention = attention
    before = signal.getsignal(signal.SIGTERM)
    js = tmp_path / "r.json"
    assert cli.run(_args(*SMALL, "--json", str(js), "--no-progress")) == 130
    data = json.loads(js.read_text())
    assert len(data["rows"]) == 2 and data["meta"]["interrupted"]
    assert any("SIGTERM) at point 3 of 4" in note for note in data["meta"]["notes"])
    assert signal.getsignal(signal.SIGTERM) is before     # the handler is the caller's again


def test_run_rejects_missing_output_folder(fake_gpu, tmp_path, capsys):
    assert cli.run(_args(*SMALL, "--json", str(tmp_path / "nope" / "r.json"))) == 2
    assert "does not exist" in capsys.readouterr().err


# --------------------------------------------------------------------------
# Variants (--window, --softcap, --alibi, --sink)
# --------------------------------------------------------------------------

_HAS_SINK = "learnable_sink" in inspect.signature(reference.attention_forward).parameters
VARIANTS = [dict(window=(8, 0)), dict(window=(5, 3)), dict(softcap=0.5), dict(alibi=True),
            pytest.param(dict(sink=True), marks=pytest.mark.skipif(not _HAS_SINK, reason="reference has no sink")),
            pytest.param(dict(window=(16, 0), softcap=30.0, alibi=True, sink=True),
                         marks=pytest.mark.skipif(not _HAS_SINK, reason="reference has no sink"))]


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_reaches_cuflash_and_the_check(fake_gpu, variant):
    pts = small_points(**variant)
    fake_gpu["peers"] = [FakePeer("flex", 1e-3), FakePeer("sdpa-flash", 1e-3)]
    result = runner.run_sweep(pts, peer_names=[], warmup=0, rep=1, check=True, progress=True)
    passed_options = fake_gpu["lib"].options
    for p, row in zip(pts, result["rows"]):
        assert row["check"]["status"] == "pass", row["check"]
        assert row["variant"] == p.variant != "" and p.variant in row["label"]
        assert row["work"]["visible_pairs"] == configs.visible_pairs(p.seqlen_q, p.seqlen_k, p.causal, p.window)
        flex_can = not p.sink
        assert row["results"]["flex"]["status"] == ("ok" if flex_can else "skipped")
        assert row["results"]["sdpa-flash"] == {"status": "skipped", "rate": None, "ms": None,
                                                "reason": peers.unsupported_reason("sdpa-flash", p)}
        assert row["ratios"]["sdpa-flash"] is None
    options = passed_options[0]
    assert options.get("window_size", (-1, -1)) == variant.get("window", (-1, -1))
    assert options.get("softcap", 0.0) == variant.get("softcap", 0.0)
    assert ("alibi_slopes" in options) == variant.get("alibi", False)
    assert ("learnable_sink" in options) == variant.get("sink", False)
    if "alibi_slopes" in options:
        assert options["alibi_slopes"].tolist() == configs.alibi_slopes(4).tolist()
    table = report.format_table(result)
    assert "variant" in table.splitlines()[0]
    missing = ", ".join(sorted(variant, key=configs.VARIANT_FEATURES.index))
    assert f"sdpa-flash skipped on every row: cannot compute {missing}" in table


@pytest.mark.parametrize("variant, option", [(dict(window=(4, 0)), "window_size"), (dict(softcap=0.3), "softcap"),
                                             (dict(alibi=True), "alibi_slopes")])
@pytest.mark.parametrize("mode", ["fwd", "bwd"])
def test_check_catches_a_kernel_that_ignores_the_variant(fake_gpu, variant, option, mode):
    fake_gpu["lib"] = fake_cuflash(ignore=(option,))
    pts = small_points(modes=(mode,), **variant)[:2]
    result = runner.run_sweep(pts, peer_names=[], warmup=0, rep=1, check=True, progress=False)
    assert {r["check"]["status"] for r in result["rows"]} == {"fail"}


def test_plain_run_passes_only_causal(fake_gpu):
    runner.run_sweep(small_points(modes=("fwd", "bwd")), peer_names=[], warmup=0, rep=1, check=False,
                     progress=False)
    assert {tuple(o) for o in fake_gpu["lib"].options} == {("causal",)}


def test_variant_flags_end_to_end(fake_gpu, tmp_path, capsys):
    js, cs = tmp_path / "r.json", tmp_path / "r.csv"
    fake_gpu["peers"] = [FakePeer("flex", 1e-3), FakePeer("sdpa-cudnn", 1e-3)]
    assert cli.run(_args(*SMALL, "--window", "16,0", "--softcap", "30", "--alibi", "--json", str(js),
                         "--csv", str(cs), "--no-progress")) == 0
    out = capsys.readouterr().out
    assert "window(16,0)+softcap30+alibi" in out
    assert "sdpa-cudnn skipped on every row: cannot compute window, softcap, alibi" in out
    data = json.loads(js.read_text())
    row = data["rows"][0]
    assert (row["window"], row["softcap"], row["alibi"], row["sink"]) == ([16, 0], 30.0, True, False)
    assert row["results"]["flex"]["status"] == "ok" and row["results"]["sdpa-cudnn"]["status"] == "skipped"
    assert "window(16,0)+softcap30+alibi" in cs.read_text()


# ---------------------------------------------------------------- varlen rows


def test_varlen_points_pack_the_batch_and_count_only_real_tokens():
    (p,) = [x for x in small_points(modes=("fwd",), varlen="steps") if x.seqlen_q == 64 and not x.causal]
    assert p.lengths == (64, 16) and "varlen" in p.features and p.variant == "varlen-steps"
    dense = configs.Point(p.dtype, p.headdim, 64, 64, 2, p.nheads, p.nheads_kv, False, "fwd")
    assert configs.work(p)["amount"] == 4 * p.nheads * (64 * 64 + 16 * 16) * p.headdim
    assert configs.work(p)["amount"] < configs.work(dense)["amount"]
    assert configs.work(p)["anchor_amount"] is None
    assert configs.varlen_lengths("steps", 1000, 4) == (1000, 750, 500, 250)
    assert configs.varlen_lengths("steps", 7, 1) == (7,) and configs.varlen_lengths("equal", 7, 3) == (7, 7, 7)
    assert all(peers.unsupported_reason(name, p) == "cannot compute varlen" for name in peers.PEER_NAMES
               if "fwd" in peers.peer_modes(name) and name not in peers.peers_supporting("varlen"))


@pytest.mark.parametrize("seqlen", [64, 1000, 8192, 16384])
def test_varlen_mix_fills_the_batch_with_lengths_between_the_bounds(seqlen):
    lengths = configs.varlen_lengths("mix", seqlen, 16384 // seqlen)
    assert sum(lengths) == 16384 // seqlen * seqlen and max(lengths) <= seqlen and len(lengths) >= 16384 // seqlen
    assert min(lengths[:-1]) >= min(configs.VARLEN_MIX_SHORTEST, seqlen)     # the last one takes what is left
    assert lengths == configs.varlen_lengths("mix", seqlen, 16384 // seqlen)   # a fixed draw
    with pytest.raises(ValueError, match="unknown varlen kind 'zipf'"):
        configs.varlen_lengths("zipf", seqlen, 2)


def test_varlen_sweep_runs_checks_and_skips_the_peers(fake_gpu):
    pts = small_points(varlen="mix")
    result = runner.run_sweep(pts, peer_names=["fast"], warmup=1, rep=2, check=True, progress=False)
    for p, row in zip(pts, result["rows"]):
        assert row["varlen"] == "mix" and row["variant"] == "varlen-mix"
        assert row["results"]["cuflash"]["status"] == "ok", row["results"]["cuflash"]
        assert row["check"]["status"] == "pass", row["check"]
        assert row["check"]["slice"].startswith("every sequence")
        assert row["results"]["fast"]["status"] == "skipped"
    # the timed calls skip the host check of the offsets (a synchronisation), as a training loop would
    assert fake_gpu["lib"].varlen_checks and not any(fake_gpu["lib"].varlen_checks)


@pytest.mark.parametrize("mode", ["fwd", "bwd"])
def test_the_padded_baseline_times_cuflash_on_the_padded_batch(fake_gpu, mode):
    (p,) = [x for x in small_points(modes=(mode,), varlen="steps") if x.seqlen_q == 64 and x.causal]
    lib = fake_gpu["lib"]
    measured = peers.CuflashPaddedPeer(FakeTimers()).measure(p, warmup=0, rep=2)
    assert len(measured["samples_ms"]) == 2 and measured["note"] == "2 sequences padded to 64 tokens"
    assert lib.calls >= 1 and lib.options[-1]["causal"] and not lib.varlen_checks   # the dense call, not varlen


def test_varlen_check_catches_a_wrong_gradient(fake_gpu):
    fake_gpu["lib"] = fake_cuflash(error=0.5)
    (p,) = [x for x in small_points(modes=("bwd",), varlen="steps") if x.seqlen_q == 48 and x.causal]
    row = runner.run_sweep([p], peer_names=[], warmup=0, rep=1, check=True, progress=False)["rows"][0]
    assert row["check"]["status"] == "fail" and "dk" in row["check"]["message"]


# ---------------------------------------------------------------- decode rows


def decode_points(page_sizes=(0, 16, 1), caches=((3, 40), (1, 64)), nheads=4, nheads_kv=2, **variant):
    """Small decode points: 40 keys in pages of 16 leave the last page part full."""
    sweep = configs.Sweep(dtypes=["bf16"], headdims=[32], seqlens=[1], causals=[False], modes=["decode"],
                          nheads=nheads, nheads_kv=nheads_kv, decode_caches=list(caches),
                          page_sizes=list(page_sizes), **variant)
    return sweep.points()


def test_decode_sweep_times_checks_and_counts_bytes(fake_gpu):
    fake_gpu["peers"] = [FakePeer("fast", 1e-3), FakePeer("broken", None)]
    pts = decode_points()
    assert [(p.batch, p.seqlen_k, p.page_size) for p in pts] == [(3, 40, 0), (3, 40, 16), (3, 40, 1),
                                                                (1, 64, 0), (1, 64, 16), (1, 64, 1)]
    result = runner.run_sweep(pts, peer_names=["fast", "broken"], warmup=1, rep=3, check=True, progress=True)
    for p, row in zip(pts, result["rows"]):
        ours = row["results"]["cuflash"]
        assert ours["status"] == "ok", ours
        assert row["rate_unit"] == "TB/s" and row["work"]["unit"] == "byte"
        assert row["work"]["amount"] == 2 * p.batch * p.seqlen_k * 2 * 32 * 2
        assert ours["rate"] == pytest.approx(configs.rate(row["work"]["amount"], ours["ms"]))
        assert ours["pct_ceiling"] == pytest.approx(100 * ours["rate"] / CEILINGS["copy_tbps"])
        assert row["check"]["status"] == "pass", row["check"]
        rows_checked = "batch rows 0, 2" if p.batch == 3 else "batch rows 0,"
        assert row["check"]["slice"].startswith(rows_checked)
        assert ("block table" in row["check"]["slice"]) == bool(p.page_size)
        assert row["cache"] == p.cache and row["peer_cache"] == "contig"
        assert row["ratios"]["fast"] == pytest.approx(ours["rate"] / row["results"]["fast"]["rate"])
        assert row["results"]["broken"]["status"] == "error"
        if p.page_size:
            assert row["results"]["fast"]["same_as"] == dataclasses.replace(p, page_size=0).label
            assert row["vs_contiguous"] is not None and row["vs_contiguous"] > 0
        else:
            assert "same_as" not in row["results"]["fast"] and row["vs_contiguous"] is None
    # a peer is timed once per shape, on the contiguous cache; its paged rows reuse that
    assert [(p.batch, p.page_size) for p in fake_gpu["peers"][0].measured] == [(3, 0), (1, 0)]
    assert len(fake_gpu["peers"][1].measured) == 2
    assert "byte_formula" in result["meta"]


def test_decode_calls_pass_the_cache_arguments(fake_gpu):
    (contig, paged) = decode_points(page_sizes=(0, 16), caches=((3, 40),))
    runner.run_sweep([contig, paged], peer_names=[], warmup=0, rep=1, check=False, progress=False)
    calls = fake_gpu["lib"].kvcache_calls
    plain = [c for c in calls if c["block_table"] is None]
    paged_calls = [c for c in calls if c["block_table"] is not None]
    assert plain and paged_calls
    assert {tuple(sorted(c)) for c in plain} == {("block_table", "cache_seqlens", "causal")}
    # paged calls skip the host read of the block table (a synchronisation per call)
    assert {tuple(sorted(c)) for c in paged_calls} == {("block_table", "cache_seqlens", "causal", "check_indices")}
    for c in calls:
        assert c["cache_seqlens"].dtype == numpy.int32 and c["cache_seqlens"].tolist() == [40] * 3
        assert c["causal"] is False
    table = paged_calls[0]["block_table"]
    assert table.dtype == numpy.int32 and table.shape == (3, 3)              # ceil(40 / 16) pages a row
    assert sorted(table.ravel().tolist()) == list(range(9))                  # every page of the pool once
    assert table.ravel().tolist() != list(range(9))                          # shuffled


@pytest.mark.parametrize("page_size", [16, 1])
def test_decode_check_catches_a_kernel_that_ignores_the_block_table(fake_gpu, page_size):
    fake_gpu["lib"] = fake_cuflash(pages_in_order=True)
    pts = decode_points(page_sizes=(0, page_size), caches=((3, 40),))
    rows = runner.run_sweep(pts, peer_names=[], warmup=0, rep=1, check=True, progress=False)["rows"]
    assert rows[0]["check"]["status"] == "pass"                              # contiguous: no table
    assert rows[1]["check"]["status"] == "fail" and "out[batch" in rows[1]["check"]["message"]


def test_decode_check_catches_a_wrong_result_in_the_last_batch_row(fake_gpu):
    lib = fake_cuflash()
    right = lib.attention_with_kvcache

    def wrong_last_row(q, *args, **kwargs):
        out = right(q, *args, **kwargs).copy()
        out[-1] += 0.05
        return out
    lib.attention_with_kvcache = wrong_last_row
    fake_gpu["lib"] = lib
    row = runner.run_sweep(decode_points(page_sizes=(0,), caches=((3, 40),)), peer_names=[], warmup=0, rep=1,
                           check=True, progress=False)["rows"][0]
    assert row["check"]["status"] == "fail" and row["check"]["message"].startswith("AssertionError: out[batch 2]")


@pytest.mark.parametrize("variant", [dict(softcap=0.5), dict(alibi=True),
                                     pytest.param(dict(sink=True), marks=pytest.mark.skipif(
                                         not _HAS_SINK, reason="reference has no sink"))])
def test_decode_variants_reach_cuflash_and_the_check(fake_gpu, variant):
    fake_gpu["peers"] = [FakePeer("sdpa-flash", 1e-3)]
    pts = decode_points(page_sizes=(0, 16), caches=((3, 40),), **variant)
    rows = runner.run_sweep(pts, peer_names=[], warmup=0, rep=1, check=True, progress=False)["rows"]
    assert {r["check"]["status"] for r in rows} == {"pass"}
    assert {r["results"]["sdpa-flash"]["status"] for r in rows} == {"skipped"}
    (name,) = variant
    option = {"softcap": "softcap", "alibi": "alibi_slopes", "sink": "learnable_sink"}[name]
    assert all(option in c for c in fake_gpu["lib"].kvcache_calls)


def test_decode_without_attention_with_kvcache_is_skipped(fake_gpu):
    lib = fake_cuflash()
    del lib.attention_with_kvcache
    fake_gpu["lib"] = lib
    row = runner.run_sweep(decode_points()[:1], peer_names=[], warmup=0, rep=1, check=True,
                           progress=False)["rows"][0]
    assert row["results"]["cuflash"]["status"] == "skipped"
    assert "attention_with_kvcache is missing" in row["results"]["cuflash"]["reason"]
    assert row["results"]["fast"]["status"] == "ok"


def test_decode_paged_error_keeps_the_row(fake_gpu):
    lib = fake_cuflash()
    right = lib.attention_with_kvcache

    def no_paging(q, k_cache, v_cache, *args, block_table=None, **kwargs):
        if block_table is not None:
            raise NotImplementedError("block_table (paged KV cache) is not supported yet")
        return right(q, k_cache, v_cache, *args, **kwargs)
    lib.attention_with_kvcache = no_paging
    fake_gpu["lib"] = lib
    result = runner.run_sweep(decode_points(page_sizes=(0, 16), caches=((3, 40),)), peer_names=["fast"], warmup=0,
                              rep=1, check=True, progress=False)
    contig, paged = result["rows"]
    assert contig["results"]["cuflash"]["status"] == "ok" and contig["check"]["status"] == "pass"
    assert paged["results"]["cuflash"] == {"status": "error", "rate": None, "ms": None,
                                           "reason": "NotImplementedError: block_table (paged KV cache) is not "
                                                     "supported yet"}
    assert paged["vs_contiguous"] is None and paged["ratios"]["fast"] is None
    assert paged["results"]["fast"]["status"] == "ok"                        # the peers' contiguous number
    assert "cuflash raised on" in report.format_errors(result)
    assert not report.failures(result)


def test_decode_run_end_to_end(fake_gpu, tmp_path, capsys):
    js, cs = tmp_path / "d.json", tmp_path / "d.csv"
    argv = ("--mode", "decode", "--headdim", "32", "--nheads", "4", "--nheads-kv", "2", "--cache", "3x40,1x64",
            "--page-size", "0,16,1", "--warmup", "0", "--rep", "2", "--no-progress", "--json", str(js),
            "--csv", str(cs))
    assert cli.run(_args(*argv)) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "cache" in lines[0].split() and "/contig" in lines[0].split() and "TB/s" in lines[0].split()
    assert sum("paged16" in line for line in lines) == 2 and sum(" contig " in line for line in lines) == 2
    assert "Decode peers read contiguous caches" in out and "K+V bytes read" in out
    data = json.loads(js.read_text())
    assert [r["page_size"] for r in data["rows"]] == [0, 16, 1] * 2
    assert all(r["check"]["status"] == "pass" for r in data["rows"])
    assert cs.read_text().splitlines()[0].count("page_size") == 1
    # a merged file recomputes paged / contiguous across parts
    merged = report.load([js])
    assert [r["vs_contiguous"] is None for r in merged["rows"]] == [True, False, False] * 2


def test_decode_peers_left_out_of_a_fwd_run(fake_gpu, monkeypatch):
    asked = []
    monkeypatch.setattr(runner.peers_mod, "make_peers", lambda names, timers: (asked.append(list(names)) or [], []))
    result = runner.run_sweep(small_points(modes=("fwd",))[:1], peer_names=list(peers.PEER_NAMES), warmup=0,
                              rep=1, check=False, progress=False)
    assert "flashinfer" not in asked[-1] and "sdpa-flash" in asked[-1]
    assert "cuflash-padded" not in asked[-1]                                # no varlen point
    assert not any("left out" in n for n in result["meta"]["notes"])        # auto: no note
    result = runner.run_sweep(small_points(modes=("fwd",))[:1], peer_names=["cuflash-padded", "flex"], warmup=0,
                              rep=1, check=False, progress=False)
    assert asked[-1] == ["flex"]
    assert "peer(s) cuflash-padded left out: they time varlen points only (--varlen)" in result["meta"]["notes"]
    runner.run_sweep(small_points(modes=("fwd",), varlen="mix")[:1], peer_names=["cuflash-padded", "flex"],
                     warmup=0, rep=1, check=False, progress=False)
    assert asked[-1] == ["cuflash-padded", "flex"]
    result = runner.run_sweep(small_points(modes=("fwd",))[:1], peer_names=["flashinfer", "sdpa-cudnn"],
                              warmup=0, rep=1, check=False, progress=False)
    assert asked[-1] == ["sdpa-cudnn"]
    assert "peer(s) flashinfer left out: they time none of fwd" in result["meta"]["notes"]
    runner.run_sweep(decode_points()[:1], peer_names=list(peers.PEER_NAMES), warmup=0, rep=1, check=False,
                     progress=False)
    assert asked[-1] == ["sdpa-flash", "sdpa-cudnn", "sdpa-eff", "flashinfer"]
