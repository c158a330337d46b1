"""Small causal GQA cases with ragged shapes for compute-sanitizer (bench/gpu_check.sh).

Every kernel cuflash has runs once here; the sanitizer reports any
out-of-bounds access or shared-memory race.
"""
import os

import cupy as cp

import cuflash
from cuflash import api, testing, tma

tma.MIN_FLOP = 0  # the small cases below take the Hopper forward's TMA loads too, as large calls do

# The additive bias with its gradient (issue 10), with dropout: ragged shapes (an odd
# seqlen_k, so bias rows start unaligned), a full bias (dbias stored), a per-key and a
# per-head one (dbias by atomics), deterministic (expanded buffers), fully masked rows.
# Each in float32 and in q's dtype (bf16, which the warp-specialised Hopper forward stages
# in shared memory: element by element where rows are unaligned, by cp.async at seqlen_k 136).
def bias_cases():
    for d, (seqlen_q, seqlen_k) in ((64, (77, 131)), (128, (131, 77)), (128, (100, 136))):
        q, k, v = testing.random_qkv(2, seqlen_q, seqlen_k, 4, 2, d, "bf16", xp=cp)
        dout = testing.random_like(q)
        for shape in ((2, 4, seqlen_q, seqlen_k), (2, 1, 1, seqlen_k), (1, 4, seqlen_q, seqlen_k)):
            in_dtype = testing.random_like(cp.empty(shape, cp.uint16).view(q.dtype))
            for bias in (cp.random.standard_normal(shape, dtype=cp.float32), in_dtype):
                out, lse = cuflash.attention(q, k, v, causal=True, return_lse=True, bias=bias, dropout_p=0.2, seed=3)
                for deterministic in (False, True):
                    cuflash.attention_backward(dout, q, k, v, out, lse, causal=True, deterministic=deterministic,
                                               bias=bias, bias_requires_grad=True, dropout_p=0.2, seed=3)


# Repeated calls that replay launch plans (api.py: forward, backward, a paged decode step with an
# append and rotary), and dropout whose seed words the kernels read from device memory (the
# Features.dropout 2 kernels cuflash.jax runs), forward and backward.
def plan_cases():
    from cuflash import api

    q, k, v = testing.random_qkv(2, 77, 131, 4, 2, 128, "fp16", xp=cp)
    dout = testing.random_like(q)
    for _ in range(2):
        out, lse = cuflash.attention(q, k, v, causal=True, return_lse=True)
        cuflash.attention_backward(dout, q, k, v, out, lse, causal=True, deterministic=True)
    _, kc, vc = testing.random_qkv(9, 1, 16, 2, 2, 128, "fp16", xp=cp)  # 9 pages of 16 keys
    table = cp.asarray(cp.random.permutation(9)[:6].reshape(2, 3), dtype=cp.int32)
    angles = cp.arange(48 * 32, dtype=cp.float32).reshape(48, 32) * 1e-2
    cos, sin = cp.cos(angles).astype(cp.float16), cp.sin(angles).astype(cp.float16)
    for _ in range(2):
        cuflash.attention_with_kvcache(q[:, :1], kc, vc, k[:, :1], v[:, :1], cache_seqlens=cp.asarray([3, 40], cp.int32),
                                       block_table=table, rotary_cos=cos, rotary_sin=sin, causal=True,
                                       check_indices=False, num_splits=2)
    words = cp.asarray([3, 1, 5], dtype=cp.uint32)  # (seed_lo, seed_hi, offset)
    refs = [api.cupy_ref(x) for x in (q, k, v, dout, out, lse)]
    opts = api.with_dropout(api.options(refs[0], None, True), api.dropout_options(0.2, 0), words.data.ptr)
    stream = cp.cuda.get_current_stream().ptr
    o = cp.empty_like(q)
    api.run_forward(*refs[:3], api.cupy_ref(o), refs[5], opts, stream)
    grads = [cp.empty_like(x) for x in (q, k, v)]
    api.run_backward(refs[3], *refs[:3], api.cupy_ref(o), refs[5], *map(api.cupy_ref, grads), opts, False, None,
                     api.cupy_alloc, stream)
    cp.cuda.Device().synchronize()


# float32 inputs (the portable kernels' 3xTF32 path): forward and backward at a head dim per
# tile table entry, ragged GQA shapes, deterministic and not, a view whose rows are 16 bytes but
# not 8 elements apart, and a varlen batch with an empty sequence.
def float32_cases():
    for d, (seqlen_q, seqlen_k) in ((40, (77, 131)), (128, (131, 77)), (192, (65, 200)), (256, (77, 131))):
        q, k, v = testing.random_qkv(2, seqlen_q, seqlen_k, 4, 2, d, "fp32", xp=cp)
        dout = testing.random_like(q)
        for causal in (False, True):
            out, lse = cuflash.attention(q, k, v, causal=causal, return_lse=True)
            for deterministic in (False, True):
                cuflash.attention_backward(dout, q, k, v, out, lse, causal=causal, deterministic=deterministic)
    q, k, v = (x[..., :64] for x in testing.random_qkv(2, 70, 90, 4, 4, 68, "fp32", xp=cp))
    out, lse = cuflash.attention(q, k, v, causal=True, return_lse=True)
    cuflash.attention_backward(testing.random_like(q), q, k, v, out, lse, causal=True)
    cu = cp.asarray([0, 37, 37, 237], dtype=cp.int32)
    q, k, v = (x[0] for x in testing.random_qkv(1, 237, 237, 4, 2, 128, "fp32", xp=cp))
    out, lse = cuflash.attention_varlen(q, k, v, cu, cu, 200, 200, causal=True, return_lse=True)
    cuflash.attention_varlen_backward(testing.random_like(q), q, k, v, out, lse, cu, cu, 200, 200, causal=True)
    cp.cuda.Device().synchronize()


# The forwards alone (on Hopper the warp-specialised kernel, fwd_sm90_ws.cu): a head dim per tile,
# ragged GQA shapes, causal and not, long queries, the variants with and without dropout, and a
# varlen batch with empty sequences (query blocks past a sequence's end leave before any barrier).
def forward_cases():
    for dtype in ("fp16", "bf16"):
        for d in (40, 96, 128, 160, 192, 256):
            q, k, v = testing.random_qkv(2, 77, 131, 4, 2, d, dtype, xp=cp)
            for causal in (False, True):
                cuflash.attention(q, k, v, causal=causal, return_lse=True)
    q, k, v = testing.random_qkv(1, 2100, 131, 2, 1, 128, "bf16", xp=cp)
    cuflash.attention(q, k, v, causal=True, return_lse=True)
    for d in (64, 128, 256):
        q, k, v = testing.random_qkv(2, 300, 131, 4, 2, d, "bf16", xp=cp)
        opts = dict(window_size=(40, 8), softcap=20.0, alibi_slopes=cp.linspace(0.05, 0.4, 4, dtype=cp.float32),
                    learnable_sink=cp.linspace(-1.0, 2.0, 4, dtype=cp.float32))
        cuflash.attention(q, k, v, causal=True, return_lse=True, **opts)
        cuflash.attention(q, k, v, causal=True, return_lse=True, dropout_p=0.2, seed=7, **opts)
        # without ALiBi: the bf16 softmax at a fixed offset (specs.fixed_offset)
        cuflash.attention(q, k, v, return_lse=True, window_size=(40, 8), softcap=20.0,
                          learnable_sink=opts["learnable_sink"])
    lengths_q, lengths_k = [37, 0, 1, 200, 129], [64, 5, 1, 150, 300]
    cu_q, cu_k = (cp.asarray([0, *cp.cumsum(cp.asarray(n)).tolist()], dtype=cp.int32) for n in (lengths_q, lengths_k))
    for d in (64, 128):  # d128: the rows' sums from P V beside the tile list (specs.FwdSm90Spec.listed_seqs)
        q, k, v = (x[0] for x in testing.random_qkv(1, sum(lengths_q), sum(lengths_k), 4, 2, d, "bf16", xp=cp))
        for causal in (False, True):
            cuflash.attention_varlen(q, k, v, cu_q, cu_k, max(lengths_q), max(lengths_k), return_lse=True,
                                     causal=causal)
    # More tiles than SMs without a mask: on Hopper a persistent grid, each CTA walking several
    # ragged tiles through both Q buffers and the K/V ring (fwd_sm90_ws.cu), a sink on one of them.
    for d in (64, 128):
        q, k, v = testing.random_qkv(1, 1000, 300, 40, 8, d, "bf16", xp=cp)
        cuflash.attention(q, k, v, return_lse=True)
        cuflash.attention(q, k, v, softcap=20.0, learnable_sink=cp.linspace(-1.0, 2.0, 40, dtype=cp.float32))
    # Causal at d64 / d128 / d192 / d256: the tiles dealt in pairs, whole rounds of pairs and then the
    # tiles left one at a time (160 pairs on 132 SMs at d128; d256 through its one Q buffer, short
    # calls only: specs.FWD_SM90_SHORT_CAUSAL); an odd block count with rows that see no key, and an
    # even one. A short band (specs.FWD_SM90_PERSISTENT_BAND) on the persistent grid too.
    for d in (64, 128, 192, 256):
        for seqlens in ((1000, 1100), (777, 409)):
            q, k, v = testing.random_qkv(1, *seqlens, 40, 8, d, "bf16", xp=cp)
            cuflash.attention(q, k, v, causal=True, return_lse=True)
            cuflash.attention(q, k, v, window_size=(600, 24), return_lse=True)


# The backwards alone (on Hopper the warp-specialised kernel, bwd_sm90_ws.cu, at d 64 and 128; bwd_sm90.cu
# at d 256, whose warpgroups split the queries of S^T and dP^T): ragged GQA shapes, causal and not,
# deterministic and not, the variants with dropout, dropout alone, and a varlen batch with empty sequences
# (key blocks past a sequence's end, blocks no query sees).
def backward_cases():
    for dtype in ("fp16", "bf16"):
        for d in (64, 128, 256):
            q, k, v = testing.random_qkv(2, 131, 77, 4, 2, d, dtype, xp=cp)
            dout = testing.random_like(q)
            for causal in (False, True):
                out, lse = cuflash.attention(q, k, v, causal=causal, return_lse=True)
                for deterministic in (False, True):
                    cuflash.attention_backward(dout, q, k, v, out, lse, causal=causal, deterministic=deterministic)
    for d in (64, 128, 256):
        q, k, v = testing.random_qkv(2, 300, 200, 4, 2, d, "bf16", xp=cp)
        dout = testing.random_like(q)
        opts = dict(window_size=(40, 8), softcap=20.0, alibi_slopes=cp.linspace(0.05, 0.4, 4, dtype=cp.float32),
                    learnable_sink=cp.linspace(-1.0, 2.0, 4, dtype=cp.float32), dropout_p=0.2, seed=7)
        out, lse = cuflash.attention(q, k, v, causal=True, return_lse=True, **opts)
        cuflash.attention_backward(dout, q, k, v, out, lse, causal=True, deterministic=True, **opts)
        # a lone softcap (folded into the exponent on Hopper: score_mod.cuh), with and without a window
        for window in ((-1, -1), (40, 8)):
            out, lse = cuflash.attention(q, k, v, causal=True, return_lse=True, softcap=20.0, window_size=window)
            cuflash.attention_backward(dout, q, k, v, out, lse, causal=True, softcap=20.0, window_size=window)
        # dropout alone (a lane pair's shuffled keep bits, dropout.cuh), causal and not
        for causal in (False, True):
            out, lse = cuflash.attention(q, k, v, causal=causal, return_lse=True, dropout_p=0.2, seed=9)
            cuflash.attention_backward(dout, q, k, v, out, lse, causal=causal, dropout_p=0.2, seed=9)
    lengths_q, lengths_k = [37, 0, 1, 200, 129], [64, 5, 1, 150, 300]
    cu_q, cu_k = (cp.asarray([0, *cp.cumsum(cp.asarray(n)).tolist()], dtype=cp.int32) for n in (lengths_q, lengths_k))
    q, k, v = (x[0] for x in testing.random_qkv(1, sum(lengths_q), sum(lengths_k), 4, 2, 128, "bf16", xp=cp))
    # with dropout (each sequence's coordinates)
    cuflash.attention_varlen(q, k, v, cu_q, cu_k, max(lengths_q), max(lengths_k), causal=True, dropout_p=0.2, seed=5)
    out, lse = cuflash.attention_varlen(q, k, v, cu_q, cu_k, max(lengths_q), max(lengths_k), return_lse=True,
                                        causal=True)
    for deterministic in (False, True):
        cuflash.attention_varlen_backward(testing.random_like(q), q, k, v, out, lse, cu_q, cu_k, max(lengths_q),
                                          max(lengths_k), causal=True, deterministic=deterministic)
    cp.cuda.Device().synchronize()


# KV cache (attention_with_kvcache): appends that run past the cache's end and lengths outside
# [0, seqlen_cache] are clamped by the append kernel, the split-KV decode and its combine, and
# the varlen forward (long query chunks); paged caches with page sizes 1 and 16, split or not,
# and block-table entries out of range (clamped by the kernels; the public call would refuse
# them, so they go straight to run_kvcache here).
def kvcache_cases(d):
    q, kc, vc = testing.random_qkv(3, 2, 96, 4, 2, d, "bf16", xp=cp)
    _, k, v = testing.random_qkv(3, 2, 5, 4, 2, d, "bf16", xp=cp)
    for lengths in (cp.asarray([0, 93, 200], dtype=cp.int32), cp.asarray([-4, 50, 96], dtype=cp.int32)):
        for splits in (1, 3):
            cuflash.attention_with_kvcache(q, kc, vc, k, v, cache_seqlens=lengths, causal=True, return_lse=True,
                                           num_splits=splits)
    # rotary (both pairings) and left padding, past-the-end appends included
    half = 32 if d >= 64 else 16  # rotary_dim = 2 * half <= d
    cos, sin = (cp.asarray(testing.random_qkv(1, 96, 1, 1, 1, half, "bf16")[0][0, :, 0]) for _ in range(2))
    for interleaved in (True, False):
        cuflash.attention_with_kvcache(q, kc, vc, k, v, cache_seqlens=cp.asarray([0, 93, 200], dtype=cp.int32),
                                       rotary_cos=cos, rotary_sin=sin, rotary_interleaved=interleaved,
                                       cache_leftpad=cp.asarray([0, 90, 3], dtype=cp.int32), check_indices=False,
                                       causal=True, num_splits=2)
    # as many CTAs per split as SMs: the tile of two CTAs per SM (specs.DECODE_TILES_MANY_UNITS)
    many = cp.cuda.Device().attributes["MultiProcessorCount"] // 2 + 1
    qm, kcm, vcm = testing.random_qkv(many, 1, 96, 4, 2, d, "bf16", xp=cp)
    for splits in (0, 3):
        cuflash.attention_with_kvcache(qm, kcm, vcm, cache_seqlens=cp.arange(many, dtype=cp.int32) % 97, causal=True,
                                       return_lse=True, num_splits=splits)
    q40 = testing.random_qkv(3, 40, 1, 4, 2, d, "bf16", xp=cp)[0]
    cuflash.attention_with_kvcache(q40, kc, vc, cache_seqlens=cp.asarray([0, 93, 200], dtype=cp.int32), causal=True)
    for page_size in (1, 16):
        pages = 96 // page_size
        kp, vp = (x.reshape(3 * pages, page_size, 2, d) for x in (kc, vc))
        table = cp.arange(3 * pages, dtype=cp.int32)[::-1].reshape(3, pages).copy()
        for splits in (1, 4):
            cuflash.attention_with_kvcache(q, kp, vp, k, v, cache_seqlens=cp.asarray([0, 93, 200], dtype=cp.int32),
                                           block_table=table, num_splits=splits, causal=True, return_lse=True)
        bad = table.copy()
        bad[0, 0], bad[1, 1] = -7, 10 ** 6
        qr, kpr, vpr, kr, vr = (api.cupy_ref(x) for x in (q, kp, vp, k, v))
        cache = api.check_kvcache(qr, kpr, vpr, kr, vr, api.cupy_ref(bad))
        lengths = cp.asarray([90, 93, 91], dtype=cp.int32)
        used = cp.empty(3, cp.int32)
        out = cp.empty_like(q)
        opts = api.kvcache_options(qr, None, True, (-1, -1), 0.0, None, None)
        api.run_kvcache(qr, kpr, vpr, kr, vr, api.cupy_ref(lengths), api.cupy_ref(used), api.cupy_ref(out), None, opts,
                        cache, 2, api.cupy_alloc, None, cp.cuda.get_current_stream().ptr)


# SANITIZE_SECTIONS=forward, backward, bias, plans, float32 or kvcache runs only that section (a quick check
# of that feature); unset: everything.
SECTIONS = {"forward": forward_cases, "backward": backward_cases, "bias": bias_cases, "plans": plan_cases,
            "float32": float32_cases, "kvcache": lambda: [kvcache_cases(d) for d in (64, 40)]}
if os.environ.get("SANITIZE_SECTIONS") in SECTIONS:
    SECTIONS[os.environ["SANITIZE_SECTIONS"]]()
    raise SystemExit(0)

for dtype in ("fp16", "bf16"):
    for d in (40, 96, 128, 256):
        q, k, v = testing.random_qkv(2, 77, 131, 4, 2, d, dtype, xp=cp)
        for causal in (False, True):
            cuflash.attention(q, k, v, causal=causal, return_lse=True)
# fp16 scores of order 1e9: rows whose softmax offset keeps its exact remainder (softmax.cuh KEEP_LO).
for d in (96, 128):
    q, k, v = (x * 1e4 for x in testing.random_qkv(2, 77, 131, 4, 2, d, "fp16", xp=cp))
    cuflash.attention(q, k, v, causal=True, return_lse=True)
# Long queries: many query blocks, each walking the warp-specialised forward's K/V ring (fwd_sm90_ws.cu).
q, k, v = testing.random_qkv(1, 2100, 131, 2, 1, 128, "bf16", xp=cp)
for causal in (False, True):
    cuflash.attention(q, k, v, causal=causal, return_lse=True)

# Backward (prepare, main kernel, convert): causal GQA with ragged shapes, both
# seqlen_q < seqlen_k and seqlen_q > seqlen_k (fully masked rows), deterministic
# and not, plus a head dim per tile shape and a ratio-1 case (dk/dv written directly).
for dtype in ("fp16", "bf16"):
    for d, (seqlen_q, seqlen_k), nheads_kv in (
        (40, (77, 131), 2), (128, (131, 77), 2), (256, (77, 131), 1), (64, (150, 150), 4), (96, (65, 200), 4),
    ):
        q, k, v = testing.random_qkv(2, seqlen_q, seqlen_k, 4, nheads_kv, d, dtype, xp=cp)
        dout = testing.random_like(q)
        for causal in (False, True):
            out, lse = cuflash.attention(q, k, v, causal=causal, return_lse=True)
            for deterministic in (False, True):
                cuflash.attention_backward(dout, q, k, v, out, lse, causal=causal, deterministic=deterministic)

# Variants (DESIGN 4a): a sliding window + softcap + ALiBi + learnable sink, forward and
# backward (with dlse), at a head dim per Hopper backward bucket and a ragged one; then
# the same with dropout.
for d, (seqlen_q, seqlen_k) in ((64, (77, 300)), (128, (300, 131)), (256, (150, 150)), (96, (131, 77))):
    q, k, v = testing.random_qkv(2, seqlen_q, seqlen_k, 4, 2, d, "bf16", xp=cp)
    dout = testing.random_like(q)
    opts = dict(window_size=(40, 8), softcap=20.0, alibi_slopes=cp.linspace(0.05, 0.4, 4, dtype=cp.float32),
                learnable_sink=cp.linspace(-1.0, 2.0, 4, dtype=cp.float32))
    for causal in (False, True):
        out, lse = cuflash.attention(q, k, v, causal=causal, return_lse=True, **opts)
        dlse = testing.random_like(lse)
        for deterministic in (False, True):
            cuflash.attention_backward(dout, q, k, v, out, lse, causal=causal, deterministic=deterministic,
                                       dlse=dlse, **opts)
    # and with dropout (issue 10): the Philox mask in the same kernels
    out, lse = cuflash.attention(q, k, v, causal=True, return_lse=True, dropout_p=0.2, seed=7, **opts)
    for deterministic in (False, True):
        cuflash.attention_backward(dout, q, k, v, out, lse, causal=True, deterministic=deterministic,
                                   dropout_p=0.2, seed=7, **opts)

bias_cases()

# Variable-length batches (issue 11): empty, single-token and long sequences, seqused_k,
# GQA, causal and window, forward and backward; grid blocks past a sequence's end must
# touch nothing.
lengths_q, lengths_k = [37, 0, 1, 200, 129], [64, 5, 1, 150, 300]
cu_q, cu_k = (cp.asarray([0, *cp.cumsum(cp.asarray(n)).tolist()], dtype=cp.int32) for n in (lengths_q, lengths_k))
for d in (64, 128):
    q, k, v = (x[0] for x in testing.random_qkv(1, sum(lengths_q), sum(lengths_k), 4, 2, d, "bf16", xp=cp))
    dout = testing.random_like(q)
    sink = cp.linspace(-1.0, 2.0, 4, dtype=cp.float32)
    for opts in (dict(causal=True), dict(window_size=(32, 8), softcap=20.0, learnable_sink=sink)):
        out, lse = cuflash.attention_varlen(q, k, v, cu_q, cu_k, max(lengths_q), max(lengths_k),
                                           return_lse=True, **opts)
        for deterministic in (False, True):
            cuflash.attention_varlen_backward(dout, q, k, v, out, lse, cu_q, cu_k, max(lengths_q),
                                              max(lengths_k), deterministic=deterministic, **opts)
    used = cp.asarray([10, 0, 1, 100, 300], dtype=cp.int32)
    cuflash.attention_varlen(q, k, v, cu_q, cu_k, max(lengths_q), max(lengths_k), seqused_k=used, causal=True)

# Offsets that no host check saw (as under jax.jit or CUDA-graph capture): out of range,
# decreasing, negative. The kernels clamp every sequence to the tensors (seqinfo.cuh), so
# the values are meaningless but nothing is read or written out of bounds.
q, k, v = (x[0] for x in testing.random_qkv(1, 300, 400, 4, 2, 64, "bf16", xp=cp))
dout = testing.random_like(q)
bad_q = cp.asarray([0, 500, -3, 10**6, 250, 2], dtype=cp.int32)
bad_k = cp.asarray([-7, 90, 1000, 0, 399, 2**30], dtype=cp.int32)
bad_used = cp.asarray([100, -1, 2**20, 5, 0], dtype=cp.int32)
stream = cp.cuda.get_current_stream().ptr
qr, kr, vr = (api._varlen_ref(api.cupy_ref(x), 5, x.shape[0]) for x in (q, k, v))
opts = api._varlen_options(qr, None, True, (-1, -1), 0.0, None, None)
for used in (None, bad_used):
    seqs = {"cu_seqlens_q": bad_q.data.ptr, "cu_seqlens_k": bad_k.data.ptr, "seqused_k": 0 if used is None else used.data.ptr}
    out, dq, dk, dv = (cp.empty_like(x) for x in (q, q, k, v))
    lse = cp.empty((4, 300), dtype=cp.float32)
    api.run_varlen_forward(qr, kr, vr, api._varlen_ref(api.cupy_ref(out), 5, 300), api.cupy_ref(lse), opts, seqs, 256,
                           stream)
    # The backward (refused with seqused_k under GQA before any launch) converts every row of its
    # accumulators, and rows that no (clamped) sequence covers were never zeroed: meaningless
    # values that initcheck rightly reports as uninitialised reads, so it runs under the others.
    if used is None and os.environ.get("SANITIZER_TOOL") != "initcheck":
        api.run_varlen_backward(*(api._varlen_ref(api.cupy_ref(x), 5, x.shape[0]) for x in (dout, q, k, v, out)),
                                api.cupy_ref(lse), *(api._varlen_ref(api.cupy_ref(x), 5, x.shape[0]) for x in (dq, dk, dv)),
                                opts, True, None, api.cupy_alloc, stream, seqs, 256, 256)

for d in (64, 40):  # 40: head-dim columns past head_dim in the kernels' tiles
    kvcache_cases(d)
plan_cases()
float32_cases()
cp.cuda.Device().synchronize()
print("sanitize_case: done")
