"""Output of a run: a table for the terminal, CSV, JSON and a PNG plot.

Everything works on the result of ``runner.run_sweep``::

    {"meta": {... "peers": [names], "ceilings": {...}, "environment": {...}, "command": ...},
     "rows": [row, ...]}

    row = {dtype, headdim, seqlen_q, seqlen_k, batch, nheads, nheads_kv, causal, mode,
           window ([left, right]), softcap, alibi, sink, dropout, bias, varlen, page_size, label,
           variant ('' for plain attention, else e.g. 'window(256,0)+softcap30'),
           rate_unit ("TFLOP/s" or "TB/s"),
           work: {unit, amount, formula, visible_pairs, anchor_amount, anchor_formula, io_bytes
                  (decode also flops)},
           results: {"cuflash" | peer: {status ("ok" | "error" | "skipped"), reason, timing,
                                        ms, ms_min, ms_max, ms_q1, ms_q3, samples_ms,
                                        first_call_ms, rate, pct_ceiling,
                                        note (optional: how a peer ran it),
                                        same_as (optional: the point whose result this is)}},
           ratios: {peer: cuflash rate / peer rate, or None},
           check: {status ("pass" | "fail" | "error" | "skipped"), message, kind, slice, tensors},
           decode rows only: cache ("contig" or "paged16"), peer_cache ("contig": what the peers
           read), vs_contiguous (cuflash paged rate / cuflash contiguous rate of the same shape,
           None for contiguous rows or when either did not run)}

Only status and reason are present for a result that did not run (plus rate
and ms as None); "skipped" is a peer that cannot compute the variant (or a
cuflash without a backward), not a failure.  Rows saved before the variant
options existed have no window/softcap/alibi/sink/varlen/variant keys: plain;
rows saved before decode have no page_size: 0.
"""
from __future__ import annotations

import collections
import csv
import json
import math

from . import configs

ROW_KEYS = ("dtype", "headdim", "seqlen_q", "seqlen_k", "batch", "nheads", "nheads_kv", "causal", "mode",
            "window", "softcap", "alibi", "sink", "dropout", "bias", "varlen", "label", "variant", "rate_unit", "work",
            "results", "ratios", "check")
RESULT_KEYS = ("status", "reason", "timing", "ms", "ms_min", "ms_max", "ms_q1", "ms_q3", "samples_ms",
               "first_call_ms", "rate", "pct_ceiling")
META_KEYS = ("tool", "schema_version", "timestamp", "command", "environment", "settings", "peers", "timing",
             "ceilings", "flop_formula", "anchor_flop_formula", "ratio_definition", "notes", "interrupted")


#: How rates print: TFLOP/s in the hundreds, TB/s in single digits.
RATE_FORMAT = {"TFLOP/s": ".1f", "TB/s": ".2f", "rate": ".2f"}


def _same_shape(row) -> tuple:
    """A decode row's point without its cache layout."""
    return tuple(str(row.get(k)) for k in ("dtype", "headdim", "seqlen_q", "seqlen_k", "batch", "nheads",
                                           "nheads_kv", "causal", "softcap", "alibi", "sink", "variant"))


def set_contiguous_ratios(rows) -> None:
    """Set ``vs_contiguous`` on every decode row: cuflash's rate on a paged cache over its rate on the
    contiguous cache of the same shape (from the same rows), None for contiguous rows or when
    either rate is missing. The issue's target: paged within 10% of contiguous (>= 0.9)."""
    contiguous = {_same_shape(r): r["results"]["cuflash"].get("rate") for r in rows
                  if r["mode"] == "decode" and not r.get("page_size")}
    for r in rows:
        if r["mode"] != "decode":
            continue
        ours, base = r["results"]["cuflash"].get("rate"), contiguous.get(_same_shape(r))
        r["vs_contiguous"] = ours / base if r.get("page_size") and ours and base else None


def load(paths) -> dict:
    """Rows of several saved JSON results as one result (e.g. a sweep run in parts).

    The first file's meta is kept; ``meta["merged_from"]`` lists every file
    with its command, time and ceilings.  A peer missing from some file gets
    "skipped" cells in that file's rows.
    """
    results = []
    for path in paths:
        with open(path) as f:
            results.append(json.load(f))
    meta = dict(results[0]["meta"])
    peers = []
    for res in results:
        peers += [name for name in res["meta"]["peers"] if name not in peers]
    rows = []
    for res in results:
        for row in res["rows"]:
            for name in peers:
                row["results"].setdefault(name, {"status": "skipped", "reason": "not measured in this file",
                                                 "rate": None, "ms": None})
                row["ratios"].setdefault(name, None)
            rows.append(row)
    meta["peers"] = peers
    meta["merged_from"] = [{"path": str(path), "command": res["meta"].get("command"),
                            "timestamp": res["meta"].get("timestamp"), "ceilings": res["meta"].get("ceilings")}
                           for path, res in zip(paths, results)]
    meta["interrupted"] = any(res["meta"].get("interrupted") for res in results)
    set_contiguous_ratios(rows)     # a paged row's contiguous row may come from another file
    return {"meta": meta, "rows": rows}


def failures(result) -> list[dict]:
    """Rows whose correctness check failed or could not run."""
    return [r for r in result["rows"] if r["check"]["status"] in ("fail", "error")]


def _fmt(value, spec, missing="-"):
    return missing if value is None else format(value, spec)


def _seqlen(row):
    s, sk = row["seqlen_q"], row["seqlen_k"]
    return str(s) if s == sk else f"{s}x{sk}"


def _cache(row) -> str:
    size = row.get("page_size") or 0
    return f"paged{size}" if size else "contig"


def format_table(result) -> str:
    peers = result["meta"]["peers"]
    rows = result["rows"]
    units = {r["rate_unit"] for r in rows}
    unit = units.pop() if len(units) == 1 else "rate"
    spec = RATE_FORMAT.get(unit, ".2f")
    variants = any(r.get("variant") for r in rows)     # a column only when some row has a variant
    decode = any(r["mode"] == "decode" for r in rows)  # the cache layout and paged / contiguous columns
    header = ["dtype", "d", "seqlen", "batch", "heads", "causal", *(["variant"] if variants else []), "mode",
              *(["cache"] if decode else []), "ms", unit, "%ceil", *(["/contig"] if decode else []),
              "1st ms", "check"]
    for name in peers:
        header += [name, "x"]
    table = [header]
    for r in rows:
        ours = r["results"]["cuflash"]
        heads = str(r["nheads"]) if r["nheads"] == r["nheads_kv"] else f"{r['nheads']}/{r['nheads_kv']}"
        check = r["check"]["status"]
        if check in ("fail", "error"):
            check = check.upper() + " !!!"
        line = [r["dtype"], str(r["headdim"]), _seqlen(r), str(r["batch"]), heads,
                "yes" if r["causal"] else "no", *([r.get("variant") or "-"] if variants else []), r["mode"],
                *([_cache(r) if r["mode"] == "decode" else "-"] if decode else []),
                _fmt(ours["ms"], ".3f"), _fmt(ours["rate"], spec), _fmt(ours.get("pct_ceiling"), ".0f"),
                *([_fmt(r.get("vs_contiguous"), ".2f")] if decode else []),
                _fmt(ours.get("first_call_ms"), ".0f"), check]
        for name in peers:
            line += [_fmt(r["results"][name]["rate"], spec), _fmt(r["ratios"].get(name), ".2f")]
        table.append(line)
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    text = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in table]
    text.insert(1, "  ".join("-" * w for w in widths))

    ceilings = result["meta"].get("ceilings", {})
    counted = {"TFLOP/s": "the exact FLOP count", "TB/s": "the K+V bytes read"}.get(unit, "the work of the mode")
    foot = [f"cuflash: ms = median over repetitions, {unit} from {counted}, "
            f"%ceil = share of the measured ceiling (matmul {_fmt(ceilings.get('matmul_tflops'), '.0f')} TFLOP/s, "
            f"copy {_fmt(ceilings.get('copy_tbps'), '.2f')} TB/s), 1st ms = first call (compile or cache load)."]
    if decode:
        foot.append("decode: K+V bytes = 2 * batch * keys * kv heads * head dim * element size; cache = cuflash's "
                    "layout (pages in a shuffled order); /contig = cuflash paged / cuflash contiguous, same shape.")
    if peers:
        foot.append(f"peers: {unit}; x = cuflash / peer (> 1: cuflash faster); '-' = did not run (reason in the JSON)."
                    + (" Decode peers read contiguous caches, also on paged rows." if decode else ""))
    skipped = collections.Counter((name, r["results"][name]["reason"]) for r in rows for name in peers
                                  if r["results"][name]["status"] == "skipped")
    for (name, reason), count in skipped.items():
        foot.append(f"{name} skipped on {'every row' if count == len(rows) else f'{count} row(s)'}: {reason}")
    return "\n".join(text + [""] + foot)


def format_failures(result) -> str:
    """A loud block listing every failed check ('' when none failed)."""
    bad = failures(result)
    if not bad:
        return ""
    lines = [f"!!! {len(bad)} CORRECTNESS CHECK(S) FAILED !!!"]
    for r in bad:
        lines.append(f"!!! {r['label']}: {r['check']['status']}: {r['check']['message']}")
    return "\n".join(lines)


def format_errors(result) -> str:
    """One line per row where cuflash raised ('' when none did); these do not change the exit code."""
    bad = [r for r in result["rows"] if r["results"]["cuflash"]["status"] == "error"]
    return "\n".join(f"cuflash raised on {r['label']}: {r['results']['cuflash']['reason']}" for r in bad)


def _clean(x):
    """JSON-safe copy: non-finite floats become None."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def write_json(path, result) -> None:
    with open(path, "w") as f:
        json.dump(_clean(result), f, indent=1, allow_nan=False)
        f.write("\n")


_CSV_RESULT_KEYS = ("status", "ms", "ms_min", "ms_max", "ms_q1", "ms_q3", "rate", "pct_ceiling", "first_call_ms",
                    "reason")
_CSV_POINT_KEYS = ("dtype", "headdim", "seqlen_q", "seqlen_k", "batch", "nheads", "nheads_kv", "causal", "mode",
                   "variant", "page_size", "rate_unit")


def csv_columns(peers) -> list[str]:
    cols = list(_CSV_POINT_KEYS) + ["work", "work_anchor", "visible_pairs", "vs_contiguous", "check",
                                    "check_message"]
    cols += [f"cuflash_{k}" for k in _CSV_RESULT_KEYS]
    for name in peers:
        cols += [f"{name}_{k}" for k in _CSV_RESULT_KEYS] + [f"{name}_ratio"]
    return cols


def write_csv(path, result) -> None:
    """One line per row; a peer's ratio column is cuflash rate / peer rate."""
    peers = result["meta"]["peers"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=csv_columns(peers))
        w.writeheader()
        for r in result["rows"]:
            out = {k: r.get(k, "") for k in _CSV_POINT_KEYS}
            out.update(work=r["work"]["amount"], work_anchor=r["work"].get("anchor_amount"),
                       visible_pairs=r["work"].get("visible_pairs"), vs_contiguous=r.get("vs_contiguous"),
                       check=r["check"]["status"], check_message=r["check"]["message"])
            for name in ["cuflash"] + peers:
                out.update({f"{name}_{k}": r["results"][name].get(k) for k in _CSV_RESULT_KEYS})
            out.update({f"{name}_ratio": r["ratios"].get(name) for name in peers})
            w.writerow(out)


def _seqlen_tick(s):
    return f"{s // 1024}k" if s >= 1024 and s % 1024 == 0 else str(s)


def _plot_decode(ax, rows, libraries, handles) -> None:
    """A decode subplot: TB/s against the cache shapes (batch x keys, by keys), one line per cuflash
    cache layout and one per peer (which read contiguous caches: once per shape)."""
    shapes = sorted({(r["seqlen_k"], r["batch"]) for r in rows})
    lines, page_sizes = {}, {}
    for r in rows:
        x = shapes.index((r["seqlen_k"], r["batch"]))
        for lib in libraries:
            rate = r["results"].get(lib, {}).get("rate")
            if rate is not None:
                name = f"cuflash {_cache(r)}" if lib == "cuflash" else lib
                lines.setdefault(name, {}).setdefault(x, rate)
                if lib == "cuflash":
                    page_sizes[name] = r.get("page_size") or 0
    # contiguous first, then the pages from the largest down
    layouts = sorted(page_sizes, key=lambda name: (page_sizes[name] != 0, -page_sizes[name]))
    for name in layouts + [lib for lib in libraries if lib in lines and lib != "cuflash"]:
        xs, ys = zip(*sorted(lines[name].items()))
        if name in layouts:      # cuflash: one colour, a dash pattern per layout (solid: contiguous)
            style = dict(linewidth=2.5, marker="o", color="C0",
                         linestyle=("-", "--", ":", "-.")[layouts.index(name) % 4])
        else:
            style = dict(linewidth=1.3, marker=".", color=f"C{libraries.index(name)}")
        (line,) = ax.plot(xs, ys, label=name, **style)
        handles.setdefault(name, line)
    ax.set_xticks(range(len(shapes)), [f"{b}x{_seqlen_tick(k)}" for k, b in shapes])
    ax.set_xlabel("cache: batch x keys")


def write_plot(path, result) -> None:
    """Rate against seqlen: one subplot per (dtype, head dim, causal, variant, mode), one line per library
    (decode: against the cache shapes, one cuflash line per cache layout)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise RuntimeError("--plot needs matplotlib: pip install matplotlib") from None

    libraries = ["cuflash"] + list(result["meta"]["peers"])
    groups = {}
    for r in result["rows"]:
        groups.setdefault((r["dtype"], r["mode"], r["causal"], r["headdim"], r.get("variant") or ""), []).append(r)
    if not groups:
        raise ValueError("no rows to plot")
    mode_order = {m: i for i, m in enumerate(configs.MODES)}
    keys = sorted(groups, key=lambda k: (k[0], mode_order.get(k[1], len(mode_order)), k[1], k[2], k[3], k[4]))
    ncols = min(len({k[3] for k in keys}), 4)
    nrows = -(-len(keys) // ncols)
    fig = Figure(figsize=(max(4.8 * ncols, 8.0), 3.4 * nrows + 1.2), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    handles = {}
    for ax, key in zip(axes.flat, keys):
        dtype, mode, causal, d, variant = key
        rows = sorted(groups[key], key=lambda r: r["seqlen_q"])
        if mode == "decode":
            _plot_decode(ax, rows, libraries, handles)
        else:
            for i, lib in enumerate(libraries):
                pts = [(r["seqlen_q"], r["results"][lib]["rate"]) for r in rows
                       if lib in r["results"] and r["results"][lib]["rate"] is not None]
                if pts:
                    xs, ys = zip(*pts)
                    style = dict(linewidth=2.5, marker="o") if lib == "cuflash" else dict(linewidth=1.3, marker=".")
                    (line,) = ax.plot(xs, ys, color=f"C{i}", label=lib, **style)
                    handles.setdefault(lib, line)
            seqlens = sorted({r["seqlen_q"] for r in rows})
            ax.set_xscale("log", base=2)
            ax.set_xticks(seqlens, [_seqlen_tick(s) for s in seqlens])
            ax.set_xlabel("seqlen")
        ax.set_ylim(bottom=0)
        heads = "" if rows[0]["nheads"] == rows[0]["nheads_kv"] else f" h{rows[0]['nheads']}/{rows[0]['nheads_kv']}"
        mask = "" if mode == "decode" else (" causal" if causal else " non-causal")
        ax.set_title(f"{dtype} d{d}{heads if mode == 'decode' else ''}{mask} {variant} {mode}".replace("  ", " "))
        ax.set_ylabel(rows[0]["rate_unit"])
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.set_visible(False)
    meta = result["meta"]
    gpu = meta.get("environment", {}).get("gpu", "GPU")
    tokens = sorted({r["batch"] * r["seqlen_q"] for r in result["rows"]})
    hidden = sorted({r["nheads"] * r["headdim"] for r in result["rows"]})
    shape = ""
    if len(tokens) == 1 and len(hidden) == 1 and not any(r["mode"] == "decode" for r in result["rows"]):
        shape = f", {tokens[0]} tokens x hidden {hidden[0]}"
    fig.suptitle(f"cuflash bench on {gpu}{shape} ({meta.get('timestamp', '')})")
    fig.legend(list(handles.values()), list(handles), loc="outside lower center",
               ncols=min(len(handles), 3 * ncols))
    fig.savefig(path, dpi=110)
