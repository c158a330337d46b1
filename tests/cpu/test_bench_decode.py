"""cuflash bench --mode decode: the grid, its options, the byte count, the report and the decode peers.

The runs themselves (cuflash's decode call, the check against the reference, the peers' reuse
on paged rows) are tested in test_bench_runner.py with a stand-in for cuflash.
"""
import argparse
import importlib.util

import numpy
import pytest

from cuflash import reference
from cuflash.bench import cli, configs, peers, report, runner


def parse(*argv):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def points(*argv):
    return cli.build_sweep(parse(*argv)).points()


# ---------------------------------------------------------------- the grid


def test_decode_default_is_the_issue_sweep():
    pts = points("--mode", "decode")
    assert [(p.batch, p.seqlen_k, p.page_size) for p in pts] == [
        (64, 8192, 0), (64, 8192, 16), (64, 8192, 1),
        (8, 32768, 0), (8, 32768, 16), (8, 32768, 1),
        (1, 131072, 0), (1, 131072, 16), (1, 131072, 1)]
    for p in pts:
        assert (p.dtype, p.headdim, p.seqlen_q, p.nheads, p.nheads_kv) == ("bf16", 128, 1, 32, 8)
        assert (p.mode, p.causal, p.features) == ("decode", False, frozenset())
    assert pts[0].label == "bf16 d128 s1x8192 b64 h32/8 full contig decode"
    assert pts[1].label == "bf16 d128 s1x8192 b64 h32/8 full paged16 decode"
    # the layouts of a shape are adjacent, the contiguous one first
    assert pts[0].shape_key() != pts[1].shape_key()


def test_decode_quick_is_smaller():
    pts = points("--quick", "--mode", "decode")
    assert {(p.batch, p.seqlen_k) for p in pts} == {(8, 8192), (1, 32768)}
    assert {p.page_size for p in pts} == {0, 16}
    assert {p.headdim for p in pts} == {64, 128} and {p.causal for p in pts} == {False}   # no causal rows
    assert len(pts) == 8


def test_decode_options():
    pts = points("--mode", "decode", "--cache", "4x2k, 2x1m", "--page-size", "contig,64", "--dtype", "fp16",
                 "--headdim", "64,128")
    assert [(p.headdim, p.batch, p.seqlen_k, p.page_size) for p in pts] == [
        (64, 4, 2048, 0), (64, 4, 2048, 64), (64, 2, 1 << 20, 0), (64, 2, 1 << 20, 64),
        (128, 4, 2048, 0), (128, 4, 2048, 64), (128, 2, 1 << 20, 0), (128, 2, 1 << 20, 64)]
    assert {p.dtype for p in pts} == {"fp16"}
    only_paged = points("--mode", "decode", "--page-size", "16")
    assert {p.page_size for p in only_paged} == {16} and len(only_paged) == 3


def test_decode_heads():
    assert {(p.nheads, p.nheads_kv) for p in points("--mode", "decode", "--nheads-kv", "4")} == {(32, 4)}
    assert {(p.nheads, p.nheads_kv) for p in points("--mode", "decode", "--nheads", "16")} == {(16, 16)}
    assert {(p.nheads, p.nheads_kv) for p in points("--mode", "decode", "--nheads", "64", "--nheads-kv", "8")} == \
        {(64, 8)}
    with pytest.raises(ValueError, match="does not divide"):
        points("--mode", "decode", "--nheads-kv", "5")


@pytest.mark.parametrize("text, value", [("64x8k", (64, 8192)), ("1X128K", (1, 131072)), (" 8x32768 ", (8, 32768))])
def test_parse_cache(text, value):
    assert configs.parse_cache(text) == value


@pytest.mark.parametrize("text", ["64", "64x", "x8k", "64x8k x2", "0x8k", "8x0", "ax8k"])
def test_parse_cache_rejects(text):
    with pytest.raises(ValueError):
        configs.parse_cache(text)


@pytest.mark.parametrize("text, value", [("0", 0), ("contig", 0), ("contiguous", 0), ("16", 16), (" 1 ", 1)])
def test_parse_page_size(text, value):
    assert configs.parse_page_size(text) == value


@pytest.mark.parametrize("argv, message", [
    (["--cache", "64"], "--cache takes BATCHxKEYS"),
    (["--cache", "64x8q"], "not a size"),
    (["--page-size", "-1"], "must be >= 0"),
    (["--page-size", "big"], "not a page size"),
])
def test_bad_decode_values_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        parse("--mode", "decode", *argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--mode", "fwd,decode"], "cannot share a run"),
    (["--mode", "decode", "--seqlen", "8k"], "--seqlen shapes the fwd/bwd sweep"),
    (["--mode", "decode", "--batch", "8"], "--batch shapes the fwd/bwd sweep"),
    (["--mode", "decode", "--total-tokens", "8k"], "--total-tokens shapes"),
    (["--mode", "decode", "--hidden", "4096"], "--hidden shapes"),
    (["--mode", "decode", "--causal", "both"], "hides no key"),
    (["--mode", "decode", "--window", "256,0"], "--window is not available in decode mode"),
    (["--mode", "decode", "--varlen"], "--varlen is not available in decode mode"),
    (["--cache", "8x8k"], "--cache applies to --mode decode only"),
    (["--mode", "fwd", "--page-size", "16"], "--page-size applies to --mode decode only"),
])
def test_options_that_do_not_fit_decode(argv, message):
    with pytest.raises(ValueError, match=message):
        points(*argv)


def test_decode_causal_false_is_fine():
    assert len(points("--mode", "decode", "--causal", "false")) == 9


def test_decode_variants_that_read_every_key_are_allowed():
    (p,) = points("--mode", "decode", "--cache", "2x1k", "--page-size", "16", "--softcap", "30", "--alibi", "--sink")
    assert p.features == {"softcap", "alibi", "sink"}
    assert p.label == "bf16 d128 s1x1024 b2 h32/8 full softcap30+alibi+sink paged16 decode"


def test_bad_decode_sweep_exits_2_before_touching_the_gpu(monkeypatch, capsys):
    from cuflash.bench import timing
    monkeypatch.setattr(timing, "gpu_problem", lambda: pytest.fail("the GPU was probed"))
    assert cli.run(parse("--mode", "decode", "--seqlen", "8k")) == 2
    assert "--cache BATCHxKEYS" in capsys.readouterr().err


def test_help_describes_decode():
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    text = " ".join(parser.format_help().split())
    for words in ("--cache BxKEYS", "--page-size N", "64x8k,8x32k,1x128k", "default 0,16,1",
                  "flashinfer times decode"):
        assert words in text, words


# ---------------------------------------------------------------- bytes and memory


def decode_point(batch=64, keys=8192, page_size=0, dtype="bf16", d=128, nheads=32, nheads_kv=8):
    return configs.Point(dtype, d, 1, keys, batch, nheads, nheads_kv, False, "decode", page_size=page_size)


def test_kv_bytes_of_the_issue_shapes():
    # 64 x 8k, 8 x 32k and 1 x 128k read 2 GiB, 1 GiB and 0.5 GiB of K+V (bf16, 8 kv heads, d 128)
    assert configs.kv_bytes(decode_point(64, 8192)) == 2 * 64 * 8192 * 8 * 128 * 2 == 2 << 30
    assert configs.kv_bytes(decode_point(8, 32768)) == 1 << 30
    assert configs.kv_bytes(decode_point(1, 131072)) == 1 << 29
    # GQA: the query heads do not change the bytes; the kv heads and the head dim do
    assert configs.kv_bytes(decode_point(nheads=64)) == configs.kv_bytes(decode_point())
    assert configs.kv_bytes(decode_point(nheads_kv=4, nheads=32)) == configs.kv_bytes(decode_point()) // 2
    assert configs.kv_bytes(decode_point(d=64, dtype="fp16")) == configs.kv_bytes(decode_point()) // 2


def test_decode_work_is_bytes_and_paged_counts_the_same():
    w = configs.work(decode_point(page_size=16))
    assert w["unit"] == "byte" and configs.RATE_UNITS[w["unit"]] == "TB/s"
    assert w["amount"] == configs.work(decode_point())["amount"] == 2 << 30
    assert w["anchor_amount"] is None and "K+V bytes read" in w["formula"]
    assert w["visible_pairs"] == 8192
    assert w["flops"] == 4 * 64 * 32 * 8192 * 128
    assert w["io_bytes"] == w["amount"] + 2 * 64 * 32 * 128 * 2      # plus q and out
    # 2 GiB in 0.5 ms = 4.29 TB/s
    assert configs.rate(w["amount"], 0.5) == pytest.approx(4.295, abs=1e-3)
    assert configs.MODES["decode"].ceiling == "copy" and runner.CEILING_KEYS["copy"] == "copy_tbps"


def test_pages_and_memory():
    assert decode_point(64, 8192, 16).num_pages == 64 * 512
    assert decode_point(3, 40, 16).num_pages == 3 * 3                # the last page part full
    assert decode_point(64, 8192, 1).num_pages == 64 * 8192
    assert decode_point(64, 8192, 0).num_pages == 0
    # cuflash's cache, a peer's, and the peer's k/v expanded to 32 heads: 2 GiB * (2 + 4)
    assert configs.device_bytes(decode_point()) == 12 << 30
    fwd = configs.Point("bf16", 128, 4096, 4096, 4, 16, 16, False, "fwd")
    assert configs.device_bytes(fwd) == 16 * 2 * 4 * 4096 * 16 * 128


def test_cli_memory_check_uses_the_decode_estimate(monkeypatch):
    cupy = pytest.importorskip("cupy")

    class Device:
        mem_info = (0, 10 << 30)
    monkeypatch.setattr(cupy.cuda, "Device", Device)
    problem = cli._memory_problem([decode_point()])
    assert problem.startswith("bf16 d128 s1x8192 b64 h32/8 full contig decode needs about 12.0 GiB")
    assert "lower --cache" in problem
    assert cli._memory_problem([decode_point(1, 8192)]) is None


# ---------------------------------------------------------------- inputs and the check's gather


def test_random_normal_on_numpy():
    x = runner.random_normal(numpy, (4, 64, 2, 32), "bf16", seed=1)
    assert x.dtype.name == "bfloat16" and x.shape == (4, 64, 2, 32)
    values = x.astype(numpy.float32)
    assert abs(values.mean()) < 0.05 and 0.9 < values.std() < 1.1
    again = runner.random_normal(numpy, (4, 64, 2, 32), "bf16", seed=1)
    assert (again.view(numpy.uint16) == x.view(numpy.uint16)).all()
    h = runner.random_normal(numpy, (8, 8), "fp16", seed=0)
    assert h.dtype == numpy.float16


def test_shuffled_block_table_is_a_permutation():
    table = runner.shuffled_block_table(4, 5)
    assert table.dtype == numpy.int32 and table.shape == (4, 5)
    assert sorted(table.ravel().tolist()) == list(range(20))
    assert table.ravel().tolist() != list(range(20))
    assert (runner.shuffled_block_table(4, 5) == table).all()


@pytest.mark.parametrize("page_size, keys", [(16, 40), (1, 7), (8, 32)])
def test_cache_rows_gathers_the_pages_of_a_row(page_size, keys):
    batch, nkv, d = 3, 2, 4
    pages = -(-keys // page_size)
    contiguous = numpy.arange(batch * pages * page_size * nkv * d, dtype=numpy.float32).reshape(
        batch, pages * page_size, nkv, d)
    table = runner.shuffled_block_table(batch, pages)
    pool = numpy.empty((batch * pages, page_size, nkv, d), numpy.float32)
    for b in range(batch):
        for i in range(pages):
            pool[table[b, i]] = contiguous[b, i * page_size:(i + 1) * page_size]
    for b in range(batch):
        got = runner.cache_rows(numpy, pool, table, b, keys, 1)
        assert got.shape == (1, keys, 1, d) and got.flags.c_contiguous
        assert (got == contiguous[b:b + 1, :keys, :1]).all()
        assert (runner.cache_rows(numpy, contiguous, None, b, keys, 2) == contiguous[b:b + 1, :keys]).all()


def test_cache_rows_keeps_bf16_bits():
    cache = runner.random_normal(numpy, (6, 4, 2, 8), "bf16", seed=3)
    table = numpy.array([[5, 0, 3], [1, 2, 4]], numpy.int32)
    got = runner.cache_rows(numpy, cache, table, 1, 10, 2)
    assert got.dtype == cache.dtype
    assert (got.view(numpy.uint16) == cache[[1, 2, 4]].reshape(1, 12, 2, 8)[:, :10].view(numpy.uint16)).all()


def test_the_reference_of_a_full_cache_is_plain_attention():
    # what the check compares with: attention_with_kvcache without new keys over full caches
    q, k, v = (runner.random_normal(numpy, shape, "bf16", seed=s) for s, shape in
               enumerate([(2, 1, 4, 16), (2, 24, 2, 16), (2, 24, 2, 16)]))
    out = reference.attention_with_kvcache(q, k, v, cache_seqlens=24)[0]
    assert numpy.allclose(out, reference.attention_forward(q, k, v)[0])


# ---------------------------------------------------------------- peers


def test_decode_peers():
    p = decode_point()
    for name in ("sdpa-flash", "sdpa-cudnn", "sdpa-eff", "flashinfer"):
        assert peers.unsupported_reason(name, p) is None
    for name in ("sdpa-math", "flex", "jax-cudnn"):
        assert peers.unsupported_reason(name, p) == "does not time decode"
    fwd = configs.Point("bf16", 128, 1024, 1024, 2, 16, 16, False, "fwd")
    assert peers.unsupported_reason("flashinfer", fwd) == "does not time fwd"
    assert peers.for_modes(peers.PEER_NAMES, {"decode"}) == (
        ["sdpa-flash", "sdpa-cudnn", "sdpa-eff", "flashinfer"], ["sdpa-math", "flex", "jax-cudnn", "cuflash-padded"])
    assert peers.for_modes(peers.PEER_NAMES, {"fwd", "bwd"})[1] == ["flashinfer"]
    assert peers.peer_modes("a-test-stand-in") == tuple(configs.MODES)
    assert set(peers.PEER_MODES) == set(peers.PEER_NAMES)
    sinks = configs.Point("bf16", 128, 1, 1024, 2, 32, 8, False, "decode", sink=True, page_size=16)
    assert peers.unsupported_reason("flashinfer", sinks) == "cannot compute sink"
    assert peers.parse_peers("flashinfer,sdpa-cudnn") == ["flashinfer", "sdpa-cudnn"]


@pytest.mark.skipif(importlib.util.find_spec("flashinfer") is not None, reason="flashinfer is installed")
def test_flashinfer_missing_is_a_note():
    found, notes = peers.make_peers(["flashinfer"], timers=None)
    assert found == [] and len(notes) == 1
    assert notes[0] in ("peer flashinfer skipped: torch is not installed",
                        "peer flashinfer skipped: flashinfer is not installed")


# ---------------------------------------------------------------- report


def _ok(ms, amount, copy=4.0):
    rate = configs.rate(amount, ms)
    return {"status": "ok", "reason": None, "timing": "cuda-events", "ms": ms, "ms_min": ms, "ms_max": ms,
            "ms_q1": ms, "ms_q3": ms, "samples_ms": [ms], "first_call_ms": 300.0, "rate": rate,
            "pct_ceiling": 100 * rate / copy}


def decode_result():
    rows = []
    for batch, keys in configs.DECODE_CACHES:
        for page_size, ms in ((0, 0.60), (16, 0.64), (1, 0.80)):
            p = decode_point(batch, keys, page_size)
            w = configs.work(p)
            peer = {"sdpa-flash": _ok(0.9, w["amount"]), "flashinfer": _ok(0.62, w["amount"])}
            if page_size:
                for name in peer:
                    peer[name]["same_as"] = decode_point(batch, keys).label
            results = {"cuflash": _ok(ms, w["amount"]), **peer}
            rows.append({**p.as_dict(), "label": p.label, "variant": p.variant, "work": w, "rate_unit": "TB/s",
                         "results": results, "cache": p.cache, "peer_cache": "contig",
                         "ratios": {n: results["cuflash"]["rate"] / peer[n]["rate"] for n in peer},
                         "check": {"status": "pass", "message": None}})
    report.set_contiguous_ratios(rows)
    meta = {"peers": ["sdpa-flash", "flashinfer"], "ceilings": {"matmul_tflops": 800.0, "copy_tbps": 4.0},
            "environment": {"gpu": "NVIDIA H200"}, "timestamp": "2026-12-01T00:00:00+00:00"}
    return {"meta": meta, "rows": rows}


def test_contiguous_ratios():
    rows = decode_result()["rows"]
    assert [r["vs_contiguous"] for r in rows[:3]] == [None, pytest.approx(0.60 / 0.64), pytest.approx(0.60 / 0.80)]
    rows[0]["results"]["cuflash"] = {"status": "error", "reason": "x", "rate": None, "ms": None}
    report.set_contiguous_ratios(rows)
    assert rows[1]["vs_contiguous"] is None and rows[4]["vs_contiguous"] == pytest.approx(0.60 / 0.64)
    fwd = {"mode": "fwd", "results": {"cuflash": {"rate": 1.0}}}
    report.set_contiguous_ratios([fwd])
    assert "vs_contiguous" not in fwd


def test_decode_table():
    text = report.format_table(decode_result())
    lines = text.splitlines()
    assert lines[0].split()[:13] == ["dtype", "d", "seqlen", "batch", "heads", "causal", "mode", "cache", "ms",
                                     "TB/s", "%ceil", "/contig", "1st"]
    first, paged = lines[2].split(), lines[3].split()
    assert first[:8] == ["bf16", "128", "1x8192", "64", "32/8", "no", "decode", "contig"]
    assert first[8:12] == ["0.600", "3.58", "89", "-"]                   # 2 GiB in 0.6 ms; 3.58 / 4.0
    assert paged[7] == "paged16" and paged[11] == "0.94"
    assert paged[-4:] == ["2.39", "1.41", "3.46", "0.97"]                  # peers' contiguous numbers
    assert "K+V bytes read" in text and "Decode peers read contiguous caches" in text
    assert "/contig = cuflash paged / cuflash contiguous" in text


def test_fwd_table_has_no_decode_columns():
    p = configs.Point("bf16", 128, 1024, 1024, 16, 16, 16, False, "fwd")
    w = configs.work(p)
    row = {**p.as_dict(), "label": p.label, "variant": "", "work": w, "rate_unit": "TFLOP/s",
           "results": {"cuflash": _ok(1.0, w["amount"])}, "ratios": {}, "check": {"status": "pass", "message": None}}
    header = report.format_table({"meta": {"peers": []}, "rows": [row]}).splitlines()[0].split()
    assert "cache" not in header and "/contig" not in header


def test_decode_csv_and_json(tmp_path):
    import csv
    import json
    res = decode_result()
    report.write_csv(tmp_path / "d.csv", res)
    with open(tmp_path / "d.csv", newline="") as f:
        lines = list(csv.DictReader(f))
    assert [line["page_size"] for line in lines[:3]] == ["0", "16", "1"]
    assert lines[0]["vs_contiguous"] == "" and float(lines[1]["vs_contiguous"]) == pytest.approx(0.9375)
    assert float(lines[0]["work"]) == 2 << 30 and lines[0]["rate_unit"] == "TB/s"
    res["meta"].update({k: None for k in report.META_KEYS if k not in res["meta"]})
    report.write_json(tmp_path / "d.json", res)
    row = json.loads((tmp_path / "d.json").read_text())["rows"][1]
    assert row["page_size"] == 16 and row["cache"] == "paged16" and row["results"]["flashinfer"]["same_as"]


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="matplotlib not installed")
def test_decode_plot(tmp_path):
    path = tmp_path / "decode.png"
    report.write_plot(path, decode_result())
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_float32_points_go_to_the_peers_that_take_float32():
    fp32 = configs.Point("fp32", 128, 1024, 1024, 2, 16, 16, False, "fwd")
    for name in ("sdpa-eff", "sdpa-math", "flex"):
        assert peers.unsupported_reason(name, fp32) is None
    for name in ("sdpa-flash", "sdpa-cudnn", "jax-cudnn"):
        assert peers.unsupported_reason(name, fp32) == "does not take fp32"
    assert configs.parse_dtype("float32") == "fp32"
