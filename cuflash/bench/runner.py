"""The sweep: for each point, time cuflash and every peer, check cuflash, and collect one row.

A row is a JSON-ready dict (the schema is in report.py).  Nothing here aborts
the sweep for one point: an exception becomes "-" with its reason in the row.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import importlib.metadata
import platform
import shlex
import signal
import sys
import threading

import numpy

from . import configs, peers as peers_mod, report, timing

CEILING_KEYS = {"matmul": "matmul_tflops", "copy": "copy_tbps"}


class CuflashBench:
    """cuflash's side of a point: inputs, the callable per mode, timing and the correctness check."""

    name = "cuflash"
    clock = "cuda-events"

    def __init__(self, timers: timing.Timers, xp=None, lib=None):
        """``xp`` (default cupy) and ``lib`` (default cuflash) are parameters only so the CPU
        tests can run this class on NumPy with a stand-in for cuflash."""
        if xp is None:
            import cupy as xp
        if lib is None:
            import cuflash as lib
        self.xp = xp
        self.cuflash = lib
        self.timers = timers
        self.has_backward = hasattr(lib, "attention_backward")
        self._key = None
        self._inputs = None

    def unavailable_for(self, p) -> str | None:
        if p.mode == "decode" and not hasattr(self.cuflash, "attention_with_kvcache"):
            return "decode not available (cuflash.attention_with_kvcache is missing)"
        if p.mode in ("bwd", "fwd+bwd") and not self.has_backward:
            return "backward not available (cuflash.attention_backward is missing)"
        if p.varlen and not hasattr(self.cuflash, "attention_varlen"):
            return "varlen not available (cuflash.attention_varlen is missing)"
        return None

    def inputs(self, p):
        """q, k, v, dout on the GPU and the keyword options of the calls (:func:`variant_options`);
        kept while consecutive points share a shape (modes are innermost). A varlen point's arrays
        are packed, (total, heads, headdim), and its options carry the sequences (varlen_args).
        A decode point's inputs are the dict of :meth:`decode_inputs`."""
        key = p.shape_key()
        if key != self._key:
            from cuflash.testing import random_like, random_qkv
            self._key = self._inputs = None    # free the previous shape's arrays first
            if p.mode == "decode":
                self._inputs = self.decode_inputs(p)
                self._key = key
                return self._inputs
            if p.varlen:
                total = sum(p.lengths)
                q, k, v = (x[0] for x in random_qkv(1, total, total, p.nheads, p.nheads_kv, p.headdim, p.dtype,
                                                    seed=0, xp=self.xp))
            else:
                q, k, v = random_qkv(p.batch, p.seqlen_q, p.seqlen_k, p.nheads, p.nheads_kv, p.headdim, p.dtype,
                                     seed=0, xp=self.xp)
            options = variant_options(p, alibi_slopes=self.xp.asarray(configs.alibi_slopes(p.nheads)),
                                      learnable_sink=self.xp.asarray(configs.sink_logits(p.nheads)))
            if p.bias:
                options["bias"] = random_normal(self.xp, p.bias_shape, p.dtype, seed=3)
            self._inputs = (q, k, v, random_like(q, seed=1), options)
            self._key = key
        return self._inputs

    def decode_inputs(self, p) -> dict:
        """A decode point's arrays (see :meth:`inputs`): q (batch, 1, nheads, headdim); k_cache and
        v_cache, contiguous (batch, seqlen_k, nheads_kv, headdim) or paged (num_pages, page_size,
        nheads_kv, headdim), filled with normal values made on the device (:func:`random_normal`);
        "call": the cache arguments of attention_with_kvcache (cache_seqlens int32 (batch,) = seqlen_k,
        full caches; block_table int32 (batch, pages per sequence) for a paged cache, the pages in a
        shuffled order); "block_table": that table on the host (None when contiguous), for the check."""
        xp = self.xp
        shape = (p.batch, p.seqlen_k, p.nheads_kv, p.headdim)
        table = None
        if p.page_size:
            shape = (p.num_pages, p.page_size, p.nheads_kv, p.headdim)
            table = shuffled_block_table(p.batch, p.num_pages // p.batch)
        inputs = {"q": random_normal(xp, (p.batch, p.seqlen_q, p.nheads, p.headdim), p.dtype, seed=0)}
        inputs["k_cache"] = random_normal(xp, shape, p.dtype, seed=1)
        inputs["v_cache"] = random_normal(xp, shape, p.dtype, seed=2)
        inputs["call"] = {"cache_seqlens": xp.full((p.batch,), p.seqlen_k, dtype=xp.int32)}
        if table is not None:
            inputs["call"]["block_table"] = xp.asarray(table)
        inputs["block_table"] = table
        inputs["options"] = variant_options(p, alibi_slopes=xp.asarray(configs.alibi_slopes(p.nheads)),
                                            learnable_sink=xp.asarray(configs.sink_logits(p.nheads)))
        return inputs

    def varlen_args(self, p) -> tuple:
        """(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k) of a varlen point (int32 offsets
        on the GPU; queries and keys have the same lengths)."""
        cu = self.xp.asarray(numpy.concatenate([[0], numpy.cumsum(p.lengths)]).astype(numpy.int32))
        return cu, cu, max(p.lengths), max(p.lengths)

    def trim(self):
        """Return CuPy's cached free blocks to the GPU (for the peers); live arrays stay."""
        pool = getattr(self.xp, "get_default_memory_pool", None)
        if pool is not None:
            pool().free_all_blocks()

    def release(self):
        self._key = self._inputs = None
        self.trim()

    def _decode_callable(self, p):
        """attention_with_kvcache over the whole cache (no new keys appended: the timed call reads
        the cache and writes out, the same work each repetition). A paged call skips the host check
        of the block table (check_indices=False), as a decode loop with a known-good table would:
        that check synchronises with the GPU once per call."""
        inputs, attention = self.inputs(p), self.cuflash.attention_with_kvcache
        q, k_cache, v_cache, call, options = (inputs[name] for name in ("q", "k_cache", "v_cache", "call", "options"))
        extra = {"check_indices": False} if call.get("block_table") is not None else {}
        return lambda: attention(q, k_cache, v_cache, **call, **options, **extra)

    def _callable(self, p, q, k, v, dout, options):
        if p.varlen:
            return self._varlen_callable(p, q, k, v, dout, options)
        attention = self.cuflash.attention
        if p.mode == "fwd":
            return lambda: attention(q, k, v, **options)
        backward = self.cuflash.attention_backward
        grad_options = {**options, "bias_requires_grad": True} if p.bias else options  # dbias too
        if p.mode == "bwd":
            out, lse = attention(q, k, v, return_lse=True, **options)
            return lambda: backward(dout, q, k, v, out, lse, **grad_options)
        if p.mode == "fwd+bwd":
            def fwd_bwd():
                o, lse_ = attention(q, k, v, return_lse=True, **options)
                return backward(dout, q, k, v, o, lse_, **grad_options)
            return fwd_bwd
        raise NotImplementedError(f"mode {p.mode!r} is not implemented for cuflash")

    def _varlen_callable(self, p, q, k, v, dout, options):
        """The mode's call on cuflash.attention_varlen(_backward): the offsets are made once here and
        are known good, so the timed calls skip the host check of the lengths (check_lengths=False),
        as a training loop would: that check copies cu_seqlens to the host, a synchronisation per call."""
        attention, args = self.cuflash.attention_varlen, self.varlen_args(p)
        options = {**options, "check_lengths": False}
        if p.mode == "fwd":
            return lambda: attention(q, k, v, *args, **options)
        backward = self.cuflash.attention_varlen_backward
        if p.mode == "bwd":
            out, lse = attention(q, k, v, *args, return_lse=True, **options)
            return lambda: backward(dout, q, k, v, out, lse, *args, **options)
        if p.mode == "fwd+bwd":
            def fwd_bwd():
                o, lse_ = attention(q, k, v, *args, return_lse=True, **options)
                return backward(dout, q, k, v, o, lse_, *args, **options)
            return fwd_bwd
        raise NotImplementedError(f"mode {p.mode!r} is not implemented for cuflash varlen")

    def measure(self, p, *, warmup, rep):
        """{"first_call_ms", "samples_ms"} and the first call's result (for the check)."""
        fn = self._decode_callable(p) if p.mode == "decode" else self._callable(p, *self.inputs(p))
        timer = self.timers.cupy
        first_ms, result = timing.first_call_ms(fn, timer.synchronize)
        samples = timer.time(fn, warmup=warmup, rep=rep)
        return {"first_call_ms": first_ms, "samples_ms": samples}, result

    def check(self, p, result) -> dict:
        """Compare a slice of the result with cuflash.reference in float64 and in the input dtype.

        The slice: batch 0, the whole sequence, the first two query heads (the
        first whole GQA group when there is one, so dk and dv sum over every
        query head that reads their kv head), with the same options (the per-head
        ALiBi slopes and sink logits of those heads).  dsink is not compared: it
        sums over the whole batch.
        """
        if p.mode == "decode":
            return self.check_decode(p, result)
        if p.dropout or p.bias:
            test = "test_dropout.py checks the mask" if p.dropout else "test_bias.py checks out and dbias"
            return {"status": "skipped", "kind": "fwd" if p.mode == "fwd" else "bwd", "tensors": {},
                    "message": f"{'dropout' if p.dropout else 'bias'}: tests/gpu/{test}, not here"}
        from cuflash import reference
        from cuflash.testing import check_accuracy
        xp = self.xp
        q, k, v, dout, options = self.inputs(p)
        group = p.nheads // p.nheads_kv
        nkv = 1 if group > 1 else min(2, p.nheads_kv)
        nq = nkv * group

        # a dense batch: batch 0 of (batch, seqlen, heads, dim); a varlen one: every sequence of
        # (total, heads, dim), the reference going sequence by sequence
        lead = (slice(None),) if p.varlen else (slice(0, 1), slice(None))

        def cut(x, n):
            """Contiguous copy of the slice's rows, heads [0, n); 16-bit floats are copied as raw
            bits (CuPy may have no bf16 copy kernel)."""
            if x.dtype.itemsize == 2:
                return xp.ascontiguousarray(x.view(xp.uint16)[(*lead, slice(0, n))]).view(x.dtype)
            return xp.ascontiguousarray(x[(*lead, slice(0, n))])

        qs, ks, vs = cut(q, nq), cut(k, nkv), cut(v, nkv)
        opts = {name: value[:nq] if name in PER_HEAD_OPTIONS else value for name, value in options.items()}
        forward, backward = reference.attention_forward, reference.attention_backward
        if p.varlen:
            cu = numpy.concatenate([[0], numpy.cumsum(p.lengths)]).astype(numpy.int32)
            opts.update(cu_seqlens_q=cu, cu_seqlens_k=cu)
            forward, backward = reference.attention_forward_varlen, reference.attention_backward_varlen
        if p.mode == "fwd":
            kind, got = "fwd", {"out": cut(result, nq)}
            refs = [forward(qs, ks, vs, precision=prec, **opts)[:1] for prec in ("float64", "lowp")]
        else:
            kind = "bwd"
            dq, dk, dv = result[:3]
            got = {"dq": cut(dq, nq), "dk": cut(dk, nkv), "dv": cut(dv, nkv)}
            refs = [backward(cut(dout, nq), qs, ks, vs, precision=prec, **opts)[:3] for prec in ("float64", "lowp")]
        rows = "every sequence" if p.varlen else "batch 0, full sequence"
        verdict = {"status": "pass", "kind": kind, "message": None, "tensors": {},
                   "slice": f"{rows}, query heads 0-{nq - 1}, kv heads 0-{nkv - 1}"
                            + ("; dsink not compared (it sums over the batch)" if p.sink and kind == "bwd" else "")}
        try:
            for (name, out), ref64, ref_lowp in zip(got.items(), *refs):
                verdict["tensors"][name] = check_accuracy(name, out, ref64, ref_lowp, p.dtype, kind=kind)
        except AssertionError as e:
            verdict.update(status="fail", message=timing.one_line(e, 500))
        return verdict

    def check_decode(self, p, result) -> dict:
        """Compare the first and the last batch row of a decode result with
        cuflash.reference.attention_with_kvcache in float64 and in the input dtype: the first two
        query heads (the first whole GQA group when there is one) over every key. A paged cache is
        first gathered into a contiguous one through the host's copy of the block table, so the
        check does not take the kernel's view of the pages on trust."""
        from cuflash import reference
        from cuflash.testing import check_accuracy
        xp = self.xp
        inputs = self.inputs(p)
        group = p.nheads // p.nheads_kv
        nkv = 1 if group > 1 else min(2, p.nheads_kv)
        nq = nkv * group
        opts = {name: value[:nq] if name in PER_HEAD_OPTIONS else value for name, value in inputs["options"].items()}
        rows = sorted({0, p.batch - 1})
        verdict = {"status": "pass", "kind": "fwd", "message": None, "tensors": {},
                   "slice": f"batch rows {', '.join(map(str, rows))}, query heads 0-{nq - 1}, kv heads 0-{nkv - 1}, "
                            f"all {p.seqlen_k} keys"
                            + ("; the paged cache gathered through the block table" if p.page_size else "")}
        try:
            for b in rows:
                qs = take(xp, inputs["q"], (slice(b, b + 1), slice(None), slice(0, nq)))
                ks, vs = (cache_rows(xp, inputs[name], inputs["block_table"], b, p.seqlen_k, nkv)
                          for name in ("k_cache", "v_cache"))
                ref64, ref_lowp = (reference.attention_with_kvcache(qs, ks, vs, cache_seqlens=p.seqlen_k,
                                                                    precision=prec, **opts)[0]
                                   for prec in ("float64", "lowp"))
                got = take(xp, result, (slice(b, b + 1), slice(None), slice(0, nq)))
                name = f"out[batch {b}]"
                verdict["tensors"][name] = check_accuracy(name, got, ref64, ref_lowp, p.dtype, kind="fwd")
        except AssertionError as e:
            verdict.update(status="fail", message=timing.one_line(e, 500))
        return verdict


#: Options of shape (nheads,): the check slices them to its query heads.
PER_HEAD_OPTIONS = ("alibi_slopes", "learnable_sink")


def take(xp, x, index):
    """Contiguous copy of ``x[index]``; 16-bit floats are copied as raw bits (CuPy may have no
    bf16 copy kernel)."""
    if x.dtype.itemsize == 2:
        return xp.ascontiguousarray(x.view(xp.uint16)[index]).view(x.dtype)
    return xp.ascontiguousarray(x[index])


def cache_rows(xp, cache, block_table, b, seqlen, nkv):
    """Batch row ``b`` of a KV cache as a contiguous (1, seqlen, nkv, headdim) array, kv heads
    [0, nkv): sliced from a contiguous cache (block_table None), or gathered page by page from a
    paged one, page ``block_table[b, i]`` holding keys [i * page_size, (i + 1) * page_size)."""
    if block_table is None:
        return take(xp, cache, (slice(b, b + 1), slice(0, seqlen), slice(0, nkv)))
    pages = take(xp, cache, (xp.asarray(block_table[b]), slice(None), slice(0, nkv)))
    return pages.reshape(1, -1, *pages.shape[2:])[:, :seqlen]


def shuffled_block_table(batch: int, pages_per_sequence: int, seed: int = 3) -> numpy.ndarray:
    """int32 (batch, pages_per_sequence): every page of the pool once, in a random order, so
    consecutive keys of a sequence lie in scattered pages, as in a server's cache after a while."""
    pool = batch * pages_per_sequence
    return numpy.random.default_rng(seed).permutation(pool).astype(numpy.int32).reshape(batch, pages_per_sequence)


def random_normal(xp, shape, dtype: str, seed: int):
    """Standard normal values in ``dtype`` ("bf16" or "fp16"), drawn by ``xp`` (CuPy: on the device,
    so gigabyte caches take no host time). bf16 keeps the top 16 bits of the float32 draw."""
    from cuflash.testing import resolve_dtype
    x = xp.random.default_rng(seed).standard_normal(shape, dtype=xp.float32)
    if dtype != "bf16":
        return x.astype(resolve_dtype(dtype))
    bits = x.view(xp.uint32)
    xp.right_shift(bits, 16, out=bits)
    return bits.astype(xp.uint16).view(resolve_dtype("bf16"))


def variant_options(p, alibi_slopes=None, learnable_sink=None) -> dict:
    """The keyword options of cuflash.attention / attention_backward (and of the reference) for point ``p``.

    Options at their default are left out, so plain runs call exactly what they always did.
    """
    options = {"causal": p.causal}
    if "window" in p.features:
        options["window_size"] = p.mask_window
    if "softcap" in p.features:
        options["softcap"] = p.softcap
    if p.alibi:
        options["alibi_slopes"] = alibi_slopes
    if p.sink:
        options["learnable_sink"] = learnable_sink
    if p.dropout:
        options["dropout_p"], options["seed"] = p.dropout, configs.DROPOUT_SEED
    return options


# --------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------

def _entry(measured: dict, work: dict, ceilings: dict, mode, clock: str) -> dict:
    stats = timing.summarize(measured["samples_ms"])
    rate = configs.rate(work["amount"], stats["ms"])
    ceiling = ceilings.get(CEILING_KEYS[mode.ceiling])
    entry = {"status": "ok", "reason": None, "timing": clock, **stats,
             "first_call_ms": measured.get("first_call_ms"),
             "rate": rate, "pct_ceiling": 100.0 * rate / ceiling if ceiling else None}
    if measured.get("note"):    # how a peer ran the point (e.g. k/v expanded, the kernel it chose)
        entry["note"] = measured["note"]
    return entry


def _not_run(status: str, reason: str) -> dict:
    return {"status": status, "reason": reason, "rate": None, "ms": None}


def _progress_tail(row, peer_names) -> str:
    unit = configs.RATE_UNITS[row["work"]["unit"]]
    spec = report.RATE_FORMAT[unit]
    res = row["results"]["cuflash"]
    if res["status"] == "ok":
        parts = [f"cuflash {res['ms']:.3f} ms {res['rate']:{spec}} {unit}"]
        if res["pct_ceiling"] is not None:
            parts[0] += f" ({res['pct_ceiling']:.0f}%)"
    else:
        parts = [f"cuflash - ({res['reason']})"]
    parts[0] += f" check {row['check']['status']}"
    for name in peer_names:
        r = row["results"][name]
        parts.append(f"{name} {r['rate']:{spec}}" if r["status"] == "ok"
                     else f"{name} skipped" if r["status"] == "skipped" else f"{name} -")
    return " | ".join(parts)


def log(line: str, end: str = "\n") -> None:
    """Notes and progress go to stderr, so stdout holds only the table."""
    print(line, end=end, file=sys.stderr, flush=True)


def run_sweep(points, *, peer_names, warmup, rep, check, progress=True) -> dict:
    """Measure every point; return {"meta": ..., "rows": [...]} (schema in report.py)."""
    env = environment()   # first: a kernel fault later would break every CUDA call
    timers = timing.Timers(timing.flush_bytes())
    ours = CuflashBench(timers)
    modes = {p.mode for p in points}
    used_names, unused = peers_mod.for_modes(peer_names, modes)
    varlen_only = [] if any(p.varlen for p in points) else [n for n in used_names if n in peers_mod.VARLEN_ONLY]
    used_names = [n for n in used_names if n not in varlen_only]
    peers, notes = peers_mod.make_peers(used_names, timers)
    if list(peer_names) != list(peers_mod.PEER_NAMES):    # named on the command line: say why
        if varlen_only:
            notes.insert(0, f"peer(s) {', '.join(varlen_only)} left out: they time varlen points only (--varlen)")
        if unused:
            notes.insert(0, f"peer(s) {', '.join(unused)} left out: they time none of {', '.join(sorted(modes))}")
    if not ours.has_backward and any(p.mode != "fwd" for p in points):
        notes.append("cuflash: backward not available (cuflash.attention_backward is missing); "
                     "bwd and fwd+bwd rows time the peers only")
    for note in notes:
        log(note)

    log("measuring ceilings (bf16 matmul 8192^3, device copy) ...")
    ceilings = timing.measure_ceilings(timers, use_torch=any(x.uses_torch for x in peers))
    log(f"ceilings: matmul {ceilings['matmul_tflops'] or 0:.0f} TFLOP/s ({ceilings['matmul_source']}), "
        f"copy {ceilings['copy_tbps']:.2f} TB/s")

    names = [x.name for x in peers]
    rows = []
    peer_results = {}    # decode: a peer's result on a contiguous cache, shared by the paged rows of its shape
    interrupted = False
    with _terminate_as_interrupt():
        for i, p in enumerate(points, 1):
            if progress:
                log(f"[{i}/{len(points)}] {p.label} ...", end=" ")
            try:
                rows.append(_measure_point(p, ours, peers, ceilings, warmup=warmup, rep=rep, check=check,
                                           peer_results=peer_results))
            except KeyboardInterrupt:
                interrupted = True
                notes.append(f"interrupted (Ctrl-C or SIGTERM) at point {i} of {len(points)}; "
                             "rows from it on are missing")
                log("\n" + notes[-1])
                break
            ours.trim()   # the check's temporaries
            if progress:
                log(_progress_tail(rows[-1], names))
    ours.release()
    report.set_contiguous_ratios(rows)

    meta = {
        "tool": "cuflash bench",
        "schema_version": 1,
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(sys.argv),
        "environment": env,
        "settings": {"warmup": warmup, "rep": rep, "check": check, "l2_flush_bytes": timers.flush_bytes,
                     "jax_calls_per_sample": peers_mod.JAX_CALLS_PER_SAMPLE,
                     "peers_requested": list(peer_names)},
        "peers": names,
        "timing": {"cuflash": ours.clock, **{x.name: x.clock for x in peers},
                   "note": timing.__doc__.strip()},
        "ceilings": ceilings,
        "flop_formula": configs.FLOP_FORMULA,
        "anchor_flop_formula": configs.ANCHOR_FLOP_FORMULA,
        "byte_formula": configs.KV_BYTE_FORMULA,
        "rate_note": "rates use the exact FLOP count (work.amount); the anchors (../shared/anchors) "
                     "halve s^2 for causal, which gives (s + 1) / s times fewer FLOPs than the exact count: "
                     "work.anchor_amount keeps that count",
        "ratio_definition": "cuflash rate / peer rate on the same point (> 1: cuflash is faster); decode: the "
                            "peers read a contiguous cache, so a paged row's ratio is cuflash paged / peer "
                            "contiguous, and vs_contiguous is cuflash paged / cuflash contiguous",
        "notes": notes,
        "interrupted": interrupted,
    }
    return {"meta": meta, "rows": rows}


@contextlib.contextmanager
def _terminate_as_interrupt():
    """SIGTERM (what `timeout` and job schedulers send) ends the sweep as Ctrl-C does: the rows
    measured so far are kept, reported and written (--json, --csv), and the exit code is 130. Only
    the main thread can take signals; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _measure_point(p, ours, peers, ceilings, *, warmup, rep, check, peer_results=None) -> dict:
    """One row. ``peer_results`` (decode): the peers' results by (peer, contiguous point), filled
    here; a paged point reuses its shape's contiguous result instead of timing the same call again."""
    mode = configs.MODES[p.mode]
    work = configs.work(p)
    row = {**p.as_dict(), "label": p.label, "variant": p.variant, "work": work,
           "rate_unit": configs.RATE_UNITS[mode.unit], "results": {}, "ratios": {},
           "check": {"status": "skipped", "message": None}}
    if p.mode == "decode":
        row["cache"] = p.cache
        row["peer_cache"] = "contig"
    peer_results = {} if peer_results is None else peer_results

    reason = ours.unavailable_for(p)
    if reason:
        row["results"]["cuflash"] = _not_run("skipped", reason)
        row["check"]["message"] = reason
    else:
        try:
            measured, result = ours.measure(p, warmup=warmup, rep=rep)
            row["results"]["cuflash"] = _entry(measured, work, ceilings, mode, ours.clock)
            if check:
                try:
                    row["check"] = ours.check(p, result)
                except Exception as e:   # the reference or the check itself broke: count it as a failure
                    row["check"] = {"status": "error", "message": timing.one_line(e, 500)}
            else:
                row["check"]["message"] = "--no-check"
            del result
        except Exception as e:
            row["results"]["cuflash"] = _not_run("error", timing.one_line(e))
            row["check"]["message"] = "cuflash did not run"

    for peer in peers:
        reason = peers_mod.unsupported_reason(peer.name, p)
        if reason:
            row["results"][peer.name] = _not_run("skipped", reason)
            continue
        contiguous = dataclasses.replace(p, page_size=0) if p.mode == "decode" else None
        if (peer.name, contiguous) in peer_results:
            row["results"][peer.name] = {**peer_results[peer.name, contiguous], "same_as": contiguous.label}
            continue
        try:
            measured = peer.measure(contiguous or p, warmup=warmup, rep=rep)
            row["results"][peer.name] = _entry(measured, work, ceilings, mode, peer.clock)
        except Exception as e:
            row["results"][peer.name] = _not_run("error", timing.one_line(e))
        if contiguous is not None:
            peer_results[peer.name, contiguous] = row["results"][peer.name]

    ours_rate = row["results"]["cuflash"]["rate"]
    for peer in peers:
        peer_rate = row["results"][peer.name]["rate"]
        row["ratios"][peer.name] = ours_rate / peer_rate if ours_rate and peer_rate else None
    return row


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment() -> dict:
    """GPU, driver and library versions (never imports torch or JAX; reports them if installed)."""
    import cupy
    rt = cupy.cuda.runtime
    props = rt.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"]
    env = {
        "gpu": name.decode() if isinstance(name, bytes) else str(name),
        "compute_capability": f"{props['major']}.{props['minor']}",
        "gpu_memory_bytes": int(props["totalGlobalMem"]),
        "driver_version": rt.driverGetVersion(),
        "cuda_runtime_version": rt.runtimeGetVersion(),
        "nvrtc_version": ".".join(str(x) for x in cupy.cuda.nvrtc.getVersion()),
        "cupy": cupy.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        import cuflash
        env["cuflash"] = getattr(cuflash, "__version__", None)
    except Exception:
        env["cuflash"] = None
    for dist in ("numpy", "torch", "triton", "jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin"):
        env[dist] = _version(dist)
    torch = sys.modules.get("torch")
    if torch is not None:
        env["torch_cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version() if torch.cuda.is_available() else None
    return env
