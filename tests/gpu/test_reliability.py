"""Reliability on the GPU (issue 16): numerics at the edges, tensors past 2^31 elements and a
1M-token sequence, repeated runs bitwise equal, streams, memory, and a second GPU.

Accuracy uses the rule of DESIGN 5 against cuflash.reference; where inputs hold NaN or inf the
rule applies to the finite entries and the set of non-finite entries must equal the float64
reference's (so a NaN reaches exactly the rows that see it).
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import cuflash
from cuflash import api, reference, testing
from cuflash.specs import PLAIN

cp = pytest.importorskip("cupy")
pytestmark = pytest.mark.gpu


def host(*xs):
    return [testing.to_numpy(x) for x in xs]


def forward_backward(q, k, v, dout, deterministic=False, **opts):
    out, lse = cuflash.attention(q, k, v, return_lse=True, **opts)
    return (out, lse, *cuflash.attention_backward(dout, q, k, v, out, lse, deterministic=deterministic, **opts))


def references(q, k, v, dout, **opts):
    """(out, lse, dq, dk, dv) of the float64 and the low-precision reference."""
    h = host(q, k, v, dout)
    refs = []
    for precision in ("float64", "lowp"):
        fwd = reference.attention_forward(*h[:3], precision=precision, **opts)
        bwd = reference.attention_backward(h[3], *h[:3], precision=precision, **opts)
        refs.append((*fwd[:2], *bwd[:3]))
    return refs


NAMES = ("out", "lse", "dq", "dk", "dv")


def check_finite_part(got, r64, rlp, dtype):
    """Non-finite entries where and only where the float64 reference has them; the accuracy
    rule on the rest."""
    for name, g, x64, xlp in zip(NAMES, got, r64, rlp):
        g = testing.to_float64(g)
        bad_got, bad_ref = ~np.isfinite(g), ~np.isfinite(x64)
        assert bad_ref.any() or name == "lse", f"{name}: the case should reach some entries"
        assert np.array_equal(bad_got, bad_ref), (
            f"{name}: {int((bad_got & ~bad_ref).sum())} non-finite entries where the reference is finite, "
            f"{int((bad_ref & ~bad_got).sum())} finite where it is not")
        keep = ~bad_ref & np.isfinite(xlp)
        testing.check_accuracy(name, np.where(keep, g, 0), np.where(keep, x64, 0), np.where(keep, xlp, 0), dtype,
                               "fwd" if name in ("out", "lse") else "bwd")


@pytest.mark.usefixtures("kernel_path")
@pytest.mark.parametrize("causal", [False, True])
def test_nan_reaches_exactly_the_rows_that_see_it(causal):
    # A NaN in one query row, one key row and an inf in one value row, GQA, seqlen_q < seqlen_k.
    q, k, v = testing.random_qkv(2, 150, 230, 4, 2, 64, "bf16", xp=cp)
    q[1, 37, 3, 5] = cp.nan
    k[0, 120, 0, 9] = cp.nan
    v[1, 200, 1, 2] = cp.inf
    dout = testing.random_like(q)
    got = forward_backward(q, k, v, dout, causal=causal)
    r64, rlp = references(q, k, v, dout, causal=causal)
    check_finite_part(got, r64, rlp, "bf16")


@pytest.mark.usefixtures("kernel_path")
@pytest.mark.parametrize("scale", [1e-6, 1e-2, 4.0, 100.0])
def test_extreme_softmax_scale(scale):
    # 1e-6: a nearly uniform softmax; 100: one key takes almost all the weight.
    q, k, v = testing.random_qkv(1, 130, 170, 4, 4, 64, "fp16", xp=cp)
    dout = testing.random_like(q)
    got = forward_backward(q, k, v, dout, causal=True, softmax_scale=scale)
    r64, rlp = references(q, k, v, dout, causal=True, softmax_scale=scale)
    for name, g, x64, xlp in zip(NAMES, got, r64, rlp):
        testing.check_accuracy(name, g, x64, xlp, "fp16", "fwd" if name in ("out", "lse") else "bwd")


@pytest.mark.usefixtures("kernel_path")
@pytest.mark.xfail(strict=True, reason=(
    "known limit (README, Limits): at |score * scale * log2(e)| >= 2^27 the softmax offset m*c, rounded up to "
    "an fp32 value, is up to one ulp (64 at 1e9) above m*c, so the row's largest P is as small as 2^-64 and "
    "underflows in the fp16 P of P V: out is 0 or several times v, never inf. An exact offset "
    "(kernels_cu/dev/softmax_exact_offset.patch) fixes it but measured 2-6% slower fp16 forwards on the H200"))
def test_fp16_q_k_of_magnitude_1e4_stay_finite_and_bounded():
    # q, k of order 1e4: scores of order 1e9 in fp32, so the softmax is one-hot up to rounding.
    # The problem is ill-conditioned (a score's fp32 rounding error is several units of its
    # exponent), so everywhere only finiteness and the bound |out| <= max|v| are asked; rows whose
    # two largest float64 probabilities are e^200 apart (no fp32 error can swap them) must give
    # their top key's v and the reference's lse.
    q, k, v = testing.random_qkv(2, 200, 260, 4, 2, 128, "fp16", xp=cp)
    big = [x * 1e4 for x in (q, k, v)]
    assert float(cp.abs(big[2]).max()) < 65504
    out, lse = cuflash.attention(*big, causal=True, return_lse=True)
    o = out.astype(cp.float32)
    assert bool(cp.isfinite(o).all()) and bool(cp.isfinite(lse).all())
    assert float(cp.abs(o).max()) <= float(cp.abs(big[2]).max())
    h = host(*big)
    probs = reference.attention_probs(*h, causal=True)  # (batch, nheads, seqlen_q, seqlen_k)
    top2 = np.sort(probs, axis=-1)[..., -2:]
    clear = top2[..., 0] < np.exp(-200.0) * top2[..., 1]
    assert clear.mean() > 0.9, "the case should be mostly well separated"
    r_out, r_lse = reference.attention_forward(*h, causal=True)
    got = testing.to_float64(out).transpose(0, 2, 1, 3)[clear]  # (rows, headdim)
    want = r_out.transpose(0, 2, 1, 3)[clear]
    scale = float(np.abs(want).max())
    assert np.abs(got - want).max() <= 1e-3 * scale, "well-separated rows must give their top key's v"
    np.testing.assert_allclose(testing.to_float64(lse)[clear], r_lse[clear], rtol=1e-5)


@pytest.mark.usefixtures("kernel_path")
def test_fp16_v_of_magnitude_1e4_is_accurate():
    # v of order 1e4 with q, k of order 1: out of order 1e4 < 65504, under the accuracy rule.
    q, k, v = testing.random_qkv(2, 200, 260, 4, 2, 128, "fp16", xp=cp)
    big = [x * 1e4 for x in (q, k, v)]
    out, lse = cuflash.attention(q, k, big[2], causal=True, return_lse=True)
    h = host(q, k, big[2])
    r64 = reference.attention_forward(*h, causal=True)
    rlp = reference.attention_forward(*h, causal=True, precision="lowp")
    testing.check_accuracy("out", out, r64[0], rlp[0], "fp16", "fwd")
    testing.check_accuracy("lse", lse, r64[1], rlp[1], "fp16", "fwd")


@pytest.mark.usefixtures("kernel_path")
@pytest.mark.parametrize("shape", [(0, 5, 7, 64), (3, 1, 1, 64), (2, 1, 300, 8), (2, 77, 1, 8)],
                         ids=["batch0", "seqlen1", "one_query_d8", "one_key_d8"])
def test_small_edges(shape):
    batch, seqlen_q, seqlen_k, d = shape
    q, k, v = testing.random_qkv(batch, seqlen_q, seqlen_k, 2, 1, d, "bf16", xp=cp)
    dout = testing.random_like(q)
    got = forward_backward(q, k, v, dout, causal=True)
    assert [x.shape for x in got] == [q.shape, (batch, 2, seqlen_q), q.shape, k.shape, v.shape]
    if batch:
        r64, rlp = references(q, k, v, dout, causal=True)
        for name, g, x64, xlp in zip(NAMES, got, r64, rlp):
            testing.check_accuracy(name, g, x64, xlp, "bf16", "fwd" if name in ("out", "lse") else "bwd")


# ---------------------------------------------------------------- size

def device_normal(shape):
    """bf16 standard normal values drawn on the GPU (the host would take minutes for 2^31 of them),
    never zero, rounded to nearest even from float32."""
    x = cp.random.standard_normal(shape, dtype=cp.float32)
    x = cp.where(cp.abs(x) < 2.0**-10, cp.copysign(cp.float32(2.0**-10), x), x)
    bits = x.view(cp.uint32)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(cp.uint16).view(testing.BF16)


def test_one_sequence_past_2_31_elements():
    # batch 1, 131136 rows of 128 heads x 128: every tensor holds 2^31 + 2^23 elements, so the
    # last rows lie past 2^31 by their row offset alone. A causal window of 64 keys keeps the
    # work small; the last 40 rows (and the keys only they see) are checked.
    seqlen, nheads, d, band, tail = 131072 + 64, 128, 128, 64, 40
    assert seqlen * nheads * d > 2**31
    q, k, v, dout = (device_normal((1, seqlen, nheads, d)) for _ in range(4))
    opts = dict(causal=True, window_size=(band, 0))
    out, lse = cuflash.attention(q, k, v, return_lse=True, **opts)
    dq, dk, dv = cuflash.attention_backward(dout, q, k, v, out, lse, **opts)
    rows, keys = slice(seqlen - tail, seqlen), slice(seqlen - tail - band, seqlen)
    h = host(q[:, rows], k[:, keys], v[:, keys], dout[:, rows])
    got = host(out[:, rows], lse[:, :, rows], dq[:, rows], dk[:, rows], dv[:, rows])
    del q, k, v, dout, out, lse, dq, dk, dv
    refs = {}
    for precision in ("float64", "lowp"):
        fwd = reference.attention_forward(*h[:3], precision=precision, **opts)
        bwd = reference.attention_backward(h[3], *h[:3], precision=precision, **opts)
        # keys [seqlen - tail, seqlen) are seen only by the queries of the slice
        refs[precision] = (fwd[0], fwd[1], bwd[0], bwd[1][:, band:], bwd[2][:, band:])
    r64, rlp = refs["float64"], refs["lowp"]
    for name, g, x64, xlp in zip(NAMES, got, r64, rlp):
        testing.check_accuracy(name, g, x64, xlp, "bf16", "fwd" if name in ("out", "lse") else "bwd")


def test_a_sequence_of_one_million_tokens():
    # Non-causal attention over 2^20 keys, one head of 64: forward and backward; 16 query rows
    # (and their dq) are checked against the reference over all keys.
    seqlen = 1 << 20
    q, k, v = testing.random_qkv(1, seqlen, seqlen, 1, 1, 64, "bf16", xp=cp)
    dout = testing.random_like(q)
    out, lse = cuflash.attention(q, k, v, return_lse=True)
    dq, dk, dv = cuflash.attention_backward(dout, q, k, v, out, lse)
    assert bool(cp.isfinite(dk.astype(cp.float32)).all()) and bool(cp.isfinite(dv.astype(cp.float32)).all())
    rows = np.sort(np.random.default_rng().choice(seqlen, 16, replace=False))
    h = host(q[:, rows], k, v, dout[:, rows])
    got = host(out[:, rows], lse[:, :, rows], dq[:, rows])
    refs = {}
    for precision in ("float64", "lowp"):
        fwd = reference.attention_forward(*h[:3], precision=precision)
        dq_ref = reference.attention_backward(h[3], *h[:3], precision=precision)[0]
        refs[precision] = (fwd[0], fwd[1], dq_ref)
    for name, g, x64, xlp in zip(NAMES, got, refs["float64"], refs["lowp"]):
        testing.check_accuracy(name, g, x64, xlp, "bf16", "fwd" if name in ("out", "lse") else "bwd")


# ---------------------------------------------------------------- repeats, streams, memory

@pytest.mark.usefixtures("kernel_path")
def test_many_runs_are_bitwise_equal():
    # Every kernel (forward, prepare, backward, GQA convert) 30 times on the same inputs: a race
    # would show up as a differing bit somewhere.
    q, k, v = testing.random_qkv(2, 333, 517, 8, 2, 128, "bf16", xp=cp)
    dout = testing.random_like(q)
    first = forward_backward(q, k, v, dout, causal=True, deterministic=True)
    for _ in range(30):
        again = forward_backward(q, k, v, dout, causal=True, deterministic=True)
        for name, a, b in zip(NAMES, first, again):
            assert cp.array_equal(a.view(cp.uint8), b.view(cp.uint8)), f"{name} differs between runs"


#: A fresh process whose first cuflash call in a new thread (as in torch's autograd thread, where
#: a backward runs) is that thread's first CUDA work: torch's allocator serves its outputs from
#: blocks the main thread freed, so nothing else has made a context current there.
NEW_THREAD = textwrap.dedent("""
    import threading
    import torch
    import cuflash.torch as ct
    q, k, v = (torch.randn(2, 96, 4, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    want = ct.flash_attn_func(q, k, v, causal=True)
    spare = ct.flash_attn_func(q, k, v, causal=True)
    del spare  # a freed block of the output's size
    torch.cuda.synchronize()
    got = []
    def work():
        try:
            got.append(ct.flash_attn_func(q, k, v, causal=True))
            torch.cuda.synchronize()
        except Exception as e:
            got.append(e)
    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert not isinstance(got[0], Exception), repr(got[0])
    assert torch.equal(got[0], want)
    print("ok")
""")


def test_a_call_in_a_thread_without_a_cuda_context_runs():
    """In a thread that has not used CUDA (torch runs a backward in its autograd thread) no
    context is current though cudaGetDevice answers 0, so the front ends' device check passes:
    the thread's first launch makes the device's context current (launch._make_context_current)
    instead of failing with CUDA_ERROR_INVALID_CONTEXT. A fresh process, so that no earlier test
    made a context current in the thread."""
    pytest.importorskip("torch")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.run([sys.executable, "-c", NEW_THREAD], capture_output=True, text=True, env=env,
                           timeout=300)
    assert child.returncode == 0 and child.stdout.strip().endswith("ok"), child.stderr[-3000:]


def test_work_on_other_streams_is_ordered_and_independent():
    q1, k1, v1 = testing.random_qkv(2, 300, 400, 4, 2, 64, "fp16", xp=cp)
    q2, k2, v2 = testing.random_qkv(2, 300, 400, 4, 2, 64, "fp16", xp=cp)
    want1, want2 = cuflash.attention(q1, k1, v1, causal=True), cuflash.attention(q2, k2, v2, causal=True)
    s1, s2 = cp.cuda.Stream(non_blocking=True), cp.cuda.Stream(non_blocking=True)
    outs = []
    for _ in range(20):
        with s1:
            a = (q1 * 1.0).astype(q1.dtype)  # produced on s1, consumed by cuflash on s1
            o1 = cuflash.attention(a, k1, v1, causal=True)
            o1c = o1 + 0  # consumed on s1 after cuflash
        with s2:
            o2 = cuflash.attention(q2, k2, v2, causal=True)
        outs.append((o1c, o2))
    s1.synchronize()
    s2.synchronize()
    for o1, o2 in outs:
        assert cp.array_equal(o1.view(cp.uint16), want1.view(cp.uint16))
        assert cp.array_equal(o2.view(cp.uint16), want2.view(cp.uint16))


def test_memory_formula_and_no_growth():
    # Allocations inside forward and backward (CuPy's allocator) against README "Memory":
    # forward out + lse; backward dq, dk, dv + one fp32 scratch of lse2, delta, dq_accum
    # (+ dk/dv_accum under GQA), each rounded to 256 bytes; nothing grows over 10,000 calls.
    batch, seqlen, nheads, nheads_kv, d = 2, 256, 8, 2, 64
    q, k, v = testing.random_qkv(batch, seqlen, seqlen, nheads, nheads_kv, d, "bf16", xp=cp)
    dout = testing.random_like(q)
    pool = cp.get_default_memory_pool()
    sizes = []

    def counting(size):
        sizes.append(size)
        return pool.malloc(size)

    cp.cuda.set_allocator(counting)
    try:
        out, lse = cuflash.attention(q, k, v, return_lse=True)
        fwd_bytes, sizes[:] = sum(sizes), []
        cuflash.attention_backward(dout, q, k, v, out, lse)
        bwd_bytes = sum(sizes)
    finally:
        cp.cuda.set_allocator(pool.malloc)
    rows = batch * seqlen * nheads
    slack = 512  # CuPy rounds each allocation up to 512 bytes
    assert rows * d * 2 + rows * 4 <= fwd_bytes <= rows * d * 2 + rows * 4 + 2 * slack, fwd_bytes  # out, lse
    spec = api.bwd_spec("bf16", d, PLAIN, False, q.device.id)
    r = spec.tiles.block_m * -(-seqlen // spec.tiles.block_m)
    # dq_accum: a row per padded query row (rounded up to Br; dq_accum_pad floats longer for the
    # warp-specialised Hopper backward at d128): every backward adds whole blocks
    scratch = 4 * (2 * batch * nheads * r + batch * nheads * r * (spec.head_dim + spec.dq_accum_pad)
                   + 2 * batch * seqlen * nheads * d)
    grads = 2 * (rows * d + 2 * batch * seqlen * nheads_kv * d)
    # the scratch's pieces start on 256-byte boundaries
    assert grads + scratch <= bwd_bytes <= grads + scratch + 4 * 256 + 4 * slack, (bwd_bytes, grads + scratch)
    cp.cuda.Device().synchronize()
    used, total = pool.used_bytes(), pool.total_bytes()
    for _ in range(10_000):
        cuflash.attention(q, k, v)
    for _ in range(1_000):
        cuflash.attention_backward(dout, q, k, v, out, lse)
    cp.cuda.Device().synchronize()
    assert pool.used_bytes() <= used and pool.total_bytes() <= total + (64 << 20)


# ---------------------------------------------------------------- a second GPU

MULTI_GPU = textwrap.dedent("""
    import sys
    import cupy as cp
    import cuflash
    from cuflash import reference, testing
    # Device 1 made current once, never left: leaving a `with cp.cuda.Device(1)` block would set
    # device 0 again, which creates its context (CUDA 12 and later) whatever cuflash does.
    cp.cuda.Device(1).use()
    q, k, v = testing.random_qkv(2, 200, 300, 4, 2, 128, "bf16", xp=cp)
    dout = testing.random_like(q)
    out, lse = cuflash.attention(q, k, v, causal=True, return_lse=True)
    dq, dk, dv = cuflash.attention_backward(dout, q, k, v, out, lse, causal=True)
    assert out.device.id == 1 and dq.device.id == 1 and dk.device.id == 1
    h = [testing.to_numpy(x) for x in (q, k, v, dout)]
    r64 = reference.attention_forward(*h[:3], causal=True)
    rlp = reference.attention_forward(*h[:3], causal=True, precision="lowp")
    testing.check_accuracy("out", out, r64[0], rlp[0], "bf16")
    b64 = reference.attention_backward(h[3], *h[:3], causal=True)
    blp = reference.attention_backward(h[3], *h[:3], causal=True, precision="lowp")
    for name, g, x64, xlp in zip(("dq", "dk", "dv"), (dq, dk, dv), b64, blp):
        testing.check_accuracy(name, g, x64, xlp, "bf16", "bwd")
    # the same calls again replay their launch plans, on GPU 1 too
    out2, lse2 = cuflash.attention(q, k, v, causal=True, return_lse=True)
    dq2, _, _ = cuflash.attention_backward(dout, q, k, v, out2, lse2, causal=True, deterministic=False)
    assert out2.device.id == 1 and cp.array_equal(out2, out) and cp.array_equal(lse2, lse)
    assert float(cp.abs(dq2.astype(cp.float32) - dq.astype(cp.float32)).max()) < 1e-2
    print("ready", flush=True)
    sys.stdin.readline()  # hold the contexts while the parent looks at them
""")


def test_arrays_on_gpu_1_run_there_and_nothing_touches_gpu_0():
    if cp.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two GPUs (the nvidia-h200-x2 machine)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen([sys.executable, "-c", MULTI_GPU], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = child.stdout.readline()
        assert line.strip() == "ready", child.stderr.read()
        apps = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,gpu_bus_id", "--format=csv,noheader"],
                              capture_output=True, text=True, check=True).stdout
        buses = subprocess.run(["nvidia-smi", "--query-gpu=index,pci.bus_id", "--format=csv,noheader"],
                               capture_output=True, text=True, check=True).stdout
    finally:
        child.stdin.close()
        child.wait(timeout=60)
    assert child.returncode == 0, child.stderr.read()
    bus_of = {int(i): b.strip().lower() for i, b in (line.split(",") for line in buses.strip().splitlines())}
    mine = {b.strip().lower() for pid, b in (line.split(",") for line in apps.strip().splitlines())
            if int(pid) == child.pid}
    if not mine:
        pytest.skip("nvidia-smi lists no processes here (no PID namespace access)")
    assert mine == {bus_of[1]}, f"the child holds contexts on {mine}; GPU 1 is {bus_of[1]}"
