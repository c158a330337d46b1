"""cuflash bench: the table, JSON, CSV and plot written from synthetic rows."""
import csv
import importlib.util
import json

import pytest

from cuflash.bench import configs, report

PEERS = ["sdpa-flash", "jax-cudnn"]


def _result(status="ok", ms=1.0):
    if status != "ok":
        return {"status": status, "reason": "RuntimeError: nope", "rate": None, "ms": None}
    return {"status": "ok", "reason": None, "timing": "cuda-events", "ms": ms, "ms_min": 0.9 * ms,
            "ms_max": 1.2 * ms, "ms_q1": 0.95 * ms, "ms_q3": 1.05 * ms, "samples_ms": [0.9 * ms, ms, 1.2 * ms],
            "first_call_ms": 1234.0, "rate": None, "pct_ceiling": None}


def make_rows():
    rows = []
    for d in (64, 128):
        for s in (1024, 4096):
            for causal in (False, True):
                for mode in ("fwd", "bwd"):
                    p = configs.Point("bf16", d, s, s, 16384 // s, 2048 // d, 2048 // d, causal, mode)
                    w = configs.work(p)
                    results = {"cuflash": _result(ms=1.0), "sdpa-flash": _result(ms=1.25),
                               "jax-cudnn": _result("error") if causal else _result(ms=0.8)}
                    for r in results.values():
                        if r["status"] == "ok":
                            r["rate"] = configs.rate(w["amount"], r["ms"])
                            r["pct_ceiling"] = 100 * r["rate"] / 800
                    ratios = {n: (results["cuflash"]["rate"] / results[n]["rate"] if results[n]["rate"] else None)
                              for n in PEERS}
                    check = {"status": "fail" if (d, s, causal, mode) == (128, 4096, True, "bwd") else "pass",
                             "message": None}
                    if check["status"] == "fail":
                        check["message"] = "AssertionError: dq: max error 1e-1 > allowed 1e-2"
                    rows.append({**p.as_dict(), "label": p.label, "variant": p.variant, "work": w,
                                 "rate_unit": "TFLOP/s",
                                 "results": results, "ratios": ratios, "check": check})
    return rows


def make_result():
    meta = {"tool": "cuflash bench", "schema_version": 1, "timestamp": "2026-11-22T20:00:00+00:00",
            "command": "cuflash bench --quick", "environment": {"gpu": "NVIDIA H200"},
            "settings": {"warmup": 10, "rep": 30}, "peers": PEERS, "timing": {},
            "ceilings": {"matmul_tflops": 800.0, "copy_tbps": 4.27}, "flop_formula": configs.FLOP_FORMULA,
            "anchor_flop_formula": configs.ANCHOR_FLOP_FORMULA, "ratio_definition": "cuflash / peer",
            "notes": ["peer flex skipped: torch is not installed"], "interrupted": False}
    return {"meta": meta, "rows": make_rows()}


def test_table_has_a_line_per_row_and_peer_columns():
    res = make_result()
    text = report.format_table(res)
    lines = text.splitlines()
    assert lines[0].split()[:7] == ["dtype", "d", "seqlen", "batch", "heads", "causal", "mode"]
    assert "sdpa-flash" in lines[0] and "jax-cudnn" in lines[0] and "TFLOP/s" in lines[0]
    body = lines[2:2 + len(res["rows"])]
    assert len(body) == 16
    assert body[0].split()[:7] == ["bf16", "64", "1024", "16", "32", "no", "fwd"]
    # cuflash 1.0 ms vs sdpa-flash 1.25 ms -> 1.25x; causal jax-cudnn failed -> '-'
    assert "1.25" in body[0]
    assert body[2].split()[-2:] == ["-", "-"]
    assert sum("FAIL !!!" in line for line in body) == 1


def test_errors_lines():
    res = make_result()
    assert report.format_errors(res) == ""
    res["rows"][3]["results"]["cuflash"] = {"status": "error", "reason": "ValueError: head dim 256", "rate": None,
                                            "ms": None}
    assert report.format_errors(res) == "cuflash raised on bf16 d64 s1024 b16 causal bwd: ValueError: head dim 256"
    assert report.format_table(res).splitlines()[5].split()[7:9] == ["-", "-"]


def test_failures_block():
    res = make_result()
    assert [r["label"] for r in report.failures(res)] == ["bf16 d128 s4096 b4 causal bwd"]
    block = report.format_failures(res)
    assert "1 CORRECTNESS CHECK(S) FAILED" in block and "dq: max error" in block
    for r in res["rows"]:
        r["check"] = {"status": "pass", "message": None}
    assert report.format_failures(res) == ""


def test_json_round_trip_has_the_schema(tmp_path):
    res = make_result()
    res["rows"][0]["results"]["cuflash"]["pct_ceiling"] = float("nan")      # must not produce invalid JSON
    path = tmp_path / "out.json"
    report.write_json(path, res)
    data = json.loads(path.read_text())
    for key in report.META_KEYS:
        assert key in data["meta"], key
    assert len(data["rows"]) == 16
    for row in data["rows"]:
        for key in report.ROW_KEYS:
            assert key in row, key
        for name in ["cuflash"] + PEERS:
            r = row["results"][name]
            if r["status"] == "ok":
                assert set(report.RESULT_KEYS) <= set(r), set(report.RESULT_KEYS) - set(r)
            else:
                assert r["reason"] and r["rate"] is None
        assert {"unit", "amount", "formula", "anchor_amount", "visible_pairs"} <= set(row["work"])
    assert data["rows"][0]["results"]["cuflash"]["pct_ceiling"] is None


def test_csv_round_trip(tmp_path):
    res = make_result()
    path = tmp_path / "out.csv"
    report.write_csv(path, res)
    with open(path, newline="") as f:
        lines = list(csv.DictReader(f))
    assert len(lines) == 16
    assert list(lines[0]) == report.csv_columns(PEERS)
    first = lines[0]
    assert (first["dtype"], first["headdim"], first["seqlen_q"], first["causal"], first["mode"]) == \
        ("bf16", "64", "1024", "False", "fwd")
    assert float(first["cuflash_ms"]) == 1.0
    assert float(first["sdpa-flash_ratio"]) == pytest.approx(1.25)
    assert float(first["work"]) == res["rows"][0]["work"]["amount"]
    causal = lines[2]
    assert causal["jax-cudnn_status"] == "error" and causal["jax-cudnn_rate"] == ""
    assert causal["jax-cudnn_reason"] == "RuntimeError: nope"
    assert sum(line["check"] == "fail" for line in lines) == 1


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="matplotlib not installed")
def test_plot_writes_a_png(tmp_path):
    path = tmp_path / "plot.png"
    report.write_plot(path, make_result())
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000


def test_from_json_merges_parts(tmp_path, capsys):
    import argparse

    from cuflash.bench import cli
    first, second = make_result(), make_result()
    second["meta"]["peers"] = ["sdpa-flash", "flex"]
    second["meta"]["command"] = "part two"
    for row in second["rows"]:
        row["results"]["flex"] = row["results"].pop("jax-cudnn")
        row["ratios"]["flex"] = row["ratios"].pop("jax-cudnn")
        row["check"] = {"status": "pass", "message": None}
    a, b, merged = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "all.json"
    report.write_json(a, first)
    report.write_json(b, second)

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    code = cli.run(parser.parse_args(["--from-json", str(a), str(b), "--json", str(merged)]))
    assert code == 1                                   # the first part has a failed check
    assert "CORRECTNESS CHECK(S) FAILED" in capsys.readouterr().out
    data = json.loads(merged.read_text())
    assert data["meta"]["peers"] == ["sdpa-flash", "jax-cudnn", "flex"]
    assert [m["command"] for m in data["meta"]["merged_from"]] == ["cuflash bench --quick", "part two"]
    assert len(data["rows"]) == 32
    assert data["rows"][0]["results"]["flex"]["status"] == "skipped"
    assert data["rows"][16]["results"]["jax-cudnn"]["status"] == "skipped"
    assert data["rows"][16]["results"]["flex"]["status"] == "ok"
    assert "flex" in report.format_table(data).splitlines()[0]


def test_from_json_unreadable_exits_2(tmp_path, capsys):
    from cuflash.bench import cli
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert cli.main(["--from-json", str(bad)]) == 2
    assert "cannot read --from-json" in capsys.readouterr().err
