"""cuflash.torch on the GPU: values and gradients against the float64 reference and
against torch SDPA, the custom ops (opcheck), torch.compile(fullgraph=True), CUDA
graphs, streams and devices, zero-copy inputs, the SDPA registration and the
transformers attention function (DESIGN 8)."""
from __future__ import annotations

import numpy as np
import pytest

from cuflash import reference, testing

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA GPU visible to torch", allow_module_level=True)
ct = pytest.importorskip("cuflash.torch")
F = torch.nn.functional
pytestmark = pytest.mark.gpu

TORCH_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def rand(*shape, dtype="bf16", grad=False):
    return torch.randn(*shape, device="cuda", dtype=TORCH_DTYPES[dtype], requires_grad=grad)


def host(t):
    """A NumPy copy in the tensor's own dtype (bf16 as ml_dtypes.bfloat16)."""
    t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).cpu().numpy().view(testing.BF16)
    return t.cpu().numpy()


# ---------------------------------------------------------------- against the reference

CASES = {
    "plain": dict(shape=(2, 113, 203, 4, 4, 64), opts={}),
    "causal_gqa": dict(shape=(2, 203, 113, 8, 2, 128), opts=dict(causal=True)),
    "window_softcap": dict(shape=(1, 257, 257, 4, 1, 128), opts=dict(window_size=(32, 8), softcap=5.0)),
    "alibi": dict(shape=(2, 64, 96, 4, 4, 64), opts=dict(causal=True, alibi=True)),
    "sink": dict(shape=(2, 96, 160, 4, 2, 64), opts=dict(sink=True)),
    "bias": dict(shape=(2, 96, 161, 4, 2, 64), opts=dict(causal=True, bias=(2, 1, 96, 161))),
    "bias_per_key": dict(shape=(2, 96, 160, 4, 4, 64), opts=dict(bias=(2, 1, 1, 160))),
}


def case_inputs(name, dtype):
    b, sq, sk, h, hkv, d = CASES[name]["shape"]
    q, k, v = rand(b, sq, h, d, dtype=dtype, grad=True), rand(b, sk, hkv, d, dtype=dtype, grad=True), \
        rand(b, sk, hkv, d, dtype=dtype, grad=True)
    opts = dict(CASES[name]["opts"])
    if opts.pop("alibi", False):
        opts["alibi_slopes"] = torch.tensor(2.0 ** (-8.0 * np.arange(1, h + 1) / h), dtype=torch.float32,
                                            device="cuda")
    if opts.pop("sink", False):
        opts["learnable_sink"] = torch.linspace(-2.0, 6.0, h, device="cuda").requires_grad_()
    if "bias" in opts:
        opts["bias"] = (2 * torch.randn(opts["bias"], device="cuda", dtype=TORCH_DTYPES[dtype])).requires_grad_()
    return q, k, v, opts


def ref_options(opts):
    return {k: host(v) if isinstance(v, torch.Tensor) else v for k, v in opts.items()}


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32"])
@pytest.mark.parametrize("name", list(CASES))
def test_values_and_gradients_match_the_reference(name, dtype):
    q, k, v, opts = case_inputs(name, dtype)
    out, lse, probs = ct.flash_attn_func(q, k, v, return_attn_probs=True, **opts)
    assert probs is None and lse.dtype == torch.float32 and lse.shape == (q.shape[0], q.shape[2], q.shape[1])
    dout = torch.randn_like(out)
    out.backward(dout)
    hq, hk, hv, hdo = (host(t) for t in (q, k, v, dout))
    ro = ref_options(opts)
    f64 = reference.attention_forward(hq, hk, hv, precision="float64", **ro)
    flp = reference.attention_forward(hq, hk, hv, precision="lowp", **ro)
    testing.check_accuracy("out", host(out), f64[0], flp[0], dtype, "fwd")
    testing.check_accuracy("lse", host(lse), f64[1], flp[1], dtype, "fwd")
    b64 = reference.attention_backward(hdo, hq, hk, hv, precision="float64", **ro)
    blp = reference.attention_backward(hdo, hq, hk, hv, precision="lowp", **ro)
    for n, t, r64, rlp in zip(("dq", "dk", "dv"), (q, k, v), b64[:3], blp[:3]):
        testing.check_accuracy(n, host(t.grad), r64, rlp, dtype, "bwd")
    if "learnable_sink" in opts:
        g = opts["learnable_sink"].grad
        assert g is not None and g.shape == (q.shape[2],)
        testing.check_accuracy("dsink", host(g), b64[4], blp[4], dtype, "bwd")
    if "bias" in opts:
        g = opts["bias"].grad
        assert g is not None and g.shape == opts["bias"].shape and g.dtype == opts["bias"].dtype
        testing.check_accuracy("dbias", host(g), b64[3], blp[3], dtype, "bwd")


def test_no_grad_fast_path_equals_the_custom_op():
    q, k, v = rand(2, 77, 4, 64), rand(2, 130, 2, 64), rand(2, 130, 2, 64)
    with torch.no_grad():
        fast = ct.flash_attn_func(q, k, v, causal=True)
    op, _, rng = torch.ops.cuflash.fwd(q, k, v, None, None, 64 ** -0.5, True, -1, 0, 0.0, False, 0.0)
    assert rng.numel() == 0
    assert torch.equal(fast, op)


@pytest.mark.parametrize("gqa", [1, 4])
def test_matches_sdpa_values_and_gradients(gqa):
    q, k, v = rand(2, 256, 8, 128, grad=True), rand(2, 256, 8 // gqa, 128, grad=True), \
        rand(2, 256, 8 // gqa, 128, grad=True)
    dout = rand(2, 256, 8, 128)
    out = ct.flash_attn_func(q, k, v, causal=True)
    out.backward(dout)
    got = [out.detach()] + [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    ref = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)), is_causal=True,
                                         enable_gqa=gqa > 1).transpose(1, 2)
    ref.backward(dout)
    want = [ref.detach()] + [t.grad for t in (q, k, v)]
    for n, a, b in zip(("out", "dq", "dk", "dv"), got, want):
        err = (a.float() - b.float()).abs().max().item()
        assert err < 2e-2 * max(1.0, b.float().abs().max().item()), (n, err)


def _drawn_seed(torch_seed):
    """The dropout rng state (seed, offset) cuflash.torch draws first after torch.manual_seed(torch_seed)."""
    torch.manual_seed(torch_seed)
    seed, offset = ct._draw_rng(torch.device("cuda")).tolist()
    return seed, offset


@pytest.mark.parametrize("compiled", [False, True])
def test_dropout_matches_the_reference_mask_and_its_gradients(compiled):
    q, k, v = rand(2, 96, 4, 64, grad=True), rand(2, 160, 2, 64, grad=True), rand(2, 160, 2, 64, grad=True)
    dout = rand(2, 96, 4, 64)
    p = 0.2
    fn = ct.flash_attn_func
    if compiled:
        fn = torch.compile(lambda *a, **kw: ct.flash_attn_func(*a, **kw), fullgraph=True)
    seed = _drawn_seed(7)
    torch.manual_seed(7)
    out = fn(q, k, v, dropout_p=p, causal=True)
    out.backward(dout)
    hq, hk, hv, hdo = (host(t) for t in (q, k, v, dout))
    keep = reference.dropout_keep_mask(*seed, 2, 4, 96, 160, p)
    ro = dict(causal=True, dropout_p=p, dropout_mask=keep)
    f64 = reference.attention_forward(hq, hk, hv, precision="float64", **ro)
    flp = reference.attention_forward(hq, hk, hv, precision="lowp", **ro)
    testing.check_accuracy("out", host(out), f64[0], flp[0], "bf16", "fwd")
    b64 = reference.attention_backward(hdo, hq, hk, hv, precision="float64", **ro)
    blp = reference.attention_backward(hdo, hq, hk, hv, precision="lowp", **ro)
    for n, t, r64, rlp in zip(("dq", "dk", "dv"), (q, k, v), b64[:3], blp[:3]):
        testing.check_accuracy(n, host(t.grad), r64, rlp, "bf16", "bwd")
    # a new call draws a new mask; the same torch seed gives the same one
    with torch.no_grad():
        torch.manual_seed(7)
        again = fn(q, k, v, dropout_p=p, causal=True)
        other = fn(q, k, v, dropout_p=p, causal=True)
    assert torch.equal(again, out.detach()) and not torch.equal(other, out.detach())


def test_sdpa_implementation_with_dropout_matches_flash_attn_func():
    attn = torch.nn.attention
    if not hasattr(attn, "activate_flash_attention_impl"):
        pytest.skip("this torch has no flash-implementation registry (torch >= 2.10)")
    q, k, v = (rand(2, 4, 128, 64, grad=True) for _ in range(3))  # (B, H, S, D)
    dout = rand(2, 4, 128, 64)
    attn.activate_flash_attention_impl(ct.SDPA_IMPL_NAME)
    try:
        torch.manual_seed(3)
        with attn.sdpa_kernel(attn.SDPBackend.FLASH_ATTENTION):
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=0.3, is_causal=True)
        out.backward(dout)
    finally:
        attn.restore_flash_attention_impl()
    got = [out.detach()] + [t.grad.clone() for t in (q, k, v)]
    qs, ks, vs = (t.detach().transpose(1, 2).requires_grad_() for t in (q, k, v))
    torch.manual_seed(3)
    mine = ct.flash_attn_func(qs, ks, vs, dropout_p=0.3, causal=True)
    mine.backward(dout.transpose(1, 2))
    want = [mine.detach().transpose(1, 2)] + [t.grad.transpose(1, 2) for t in (qs, ks, vs)]
    for n, a, b in zip(("out", "dq", "dk", "dv"), got, want):
        assert torch.equal(a, b), n


def test_packed_forms_read_views_and_return_packed_gradients():
    qkv = rand(2, 96, 3, 4, 64, grad=True)
    out = ct.flash_attn_qkvpacked_func(qkv, causal=True)
    out.sum().backward()
    q, k, v = (qkv.detach()[:, :, i].clone().requires_grad_() for i in range(3))
    ref = ct.flash_attn_func(q, k, v, causal=True)
    ref.sum().backward()
    assert torch.equal(out, ref)
    assert qkv.grad.shape == qkv.shape
    assert torch.allclose(qkv.grad, torch.stack([q.grad, k.grad, v.grad], dim=2), atol=1e-2, rtol=0)
    qq = rand(2, 50, 4, 64)
    kv = rand(2, 96, 2, 2, 64)
    assert torch.equal(ct.flash_attn_kvpacked_func(qq, kv), ct.flash_attn_func(qq, kv[:, :, 0], kv[:, :, 1]))


def test_inputs_reach_the_kernel_without_a_copy(monkeypatch):
    from cuflash import api, launch

    seen = []
    real = api.run_forward
    monkeypatch.setattr(api, "_PLANS", {})  # the validated path, which records a plan afterwards
    monkeypatch.setattr(api, "run_forward", lambda q, k, v, *a: (
        q.ptr < launch.placeholder(0) and seen.append((q, k, v))) or real(q, k, v, *a))
    qkv = rand(1, 64, 3, 4, 64)
    big = rand(2, 4, 64, 64).transpose(1, 2)  # (B, S, H, D) view of a (B, H, S, D) tensor
    with torch.no_grad():
        ct.flash_attn_qkvpacked_func(qkv)
        ct.flash_attn_func(big, big, big)
    (q, k, v), (q2, _, _) = seen
    row = qkv.stride(2) * qkv.element_size()
    assert (q.ptr, k.ptr, v.ptr) == (qkv.data_ptr(), qkv.data_ptr() + row, qkv.data_ptr() + 2 * row)
    assert q.strides == qkv[:, :, 0].stride()
    assert q2.ptr == big.data_ptr() and q2.strides == big.stride()


def test_noncontiguous_last_dim_is_copied_like_flash_attn():
    q = rand(1, 32, 2, 128)[..., ::2]
    k, v = rand(1, 32, 2, 64), rand(1, 32, 2, 64)
    with torch.no_grad():
        assert torch.equal(ct.flash_attn_func(q, k, v), ct.flash_attn_func(q.contiguous(), k, v))


def test_kvcache_without_cache_ops_is_attention_over_the_cache():
    q, kc, vc = rand(2, 1, 8, 128), rand(2, 300, 2, 128), rand(2, 300, 2, 128)
    out, lse = ct.flash_attn_with_kvcache(q, kc, vc, causal=True, return_softmax_lse=True)
    with torch.no_grad():
        ref, ref_lse, _ = ct.flash_attn_func(q, kc, vc, causal=True, return_attn_probs=True)
    assert torch.equal(out, ref) and torch.equal(lse, ref_lse)


def test_kvcache_appends_in_place_then_attends_over_the_filled_keys():
    """flash_attn_with_kvcache with new keys: the caches match the reference's bitwise, out and lse
    pass the accuracy rule (issue 12, first piece)."""
    q, kc, vc = rand(3, 2, 8, 128), rand(3, 64, 2, 128), rand(3, 64, 2, 128)
    k, v = rand(3, 2, 2, 128), rand(3, 2, 2, 128)
    lengths = [0, 30, 63]
    hq, hkc, hvc, hk, hv = (host(t) for t in (q, kc, vc, k, v))
    out, lse = ct.flash_attn_with_kvcache(q, kc, vc, k, v, cache_seqlens=torch.tensor(lengths, dtype=torch.int32,
                                                                                         device="cuda"),
                                          causal=True, return_softmax_lse=True)
    r64 = reference.attention_with_kvcache(hq, hkc, hvc, hk, hv, cache_seqlens=lengths, causal=True)
    rlp = reference.attention_with_kvcache(hq, hkc, hvc, hk, hv, cache_seqlens=lengths, causal=True, precision="lowp")
    testing.check_accuracy("out", host(out), r64[0], rlp[0], "bf16", "fwd")
    testing.check_accuracy("lse", host(lse), r64[1], rlp[1], "bf16", "fwd")
    assert np.array_equal(host(kc).view(np.uint16), r64[2].view(np.uint16))
    assert np.array_equal(host(vc).view(np.uint16), r64[3].view(np.uint16))


@pytest.mark.parametrize("page_size", [16, 3])
def test_kvcache_paged_with_splits_and_cuda_graph(page_size):
    """flash_attn_with_kvcache over a paged cache (shuffled pages) with an append and 4 splits, eager
    and replayed from a CUDA graph (no host read of the block table while capturing)."""
    batch, seqlen = 3, 96
    pages = batch * seqlen // page_size
    q, kp, vp = rand(batch, 1, 8, 128), rand(pages, page_size, 2, 128), rand(pages, page_size, 2, 128)
    k, v = rand(batch, 1, 2, 128), rand(batch, 1, 2, 128)
    table = torch.randperm(pages, device="cuda").to(torch.int32).view(batch, -1)
    lengths = torch.tensor([0, 40, 95], dtype=torch.int32, device="cuda")
    hq, hkp, hvp, hk, hv = (host(t) for t in (q, kp, vp, k, v))
    r64 = reference.attention_with_kvcache(hq, hkp, hvp, hk, hv, cache_seqlens=[0, 40, 95], block_table=host(table),
                                           causal=True)
    rlp = reference.attention_with_kvcache(hq, hkp, hvp, hk, hv, cache_seqlens=[0, 40, 95], block_table=host(table),
                                           causal=True, precision="lowp")
    out = ct.flash_attn_with_kvcache(q, kp, vp, k, v, cache_seqlens=lengths, block_table=table, causal=True,
                                     num_splits=4)
    testing.check_accuracy("out", host(out), r64[0], rlp[0], "bf16", "fwd")
    assert np.array_equal(host(kp).view(np.uint16), r64[2].view(np.uint16))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        replayed = ct.flash_attn_with_kvcache(q, kp, vp, k, v, cache_seqlens=lengths, block_table=table, causal=True,
                                              num_splits=4)
    replayed.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(replayed, out)  # the same appended rows again, so the same keys and result


def test_varlen_matches_dense_per_sequence_values_and_gradients():
    """flash_attn_varlen_func on packed sequences against flash_attn_func on each one (issue 11)."""
    lengths_q, lengths_k = [37, 0, 1, 130], [64, 5, 1, 200]
    cu_q = torch.tensor([0, *torch.tensor(lengths_q).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    cu_k = torch.tensor([0, *torch.tensor(lengths_k).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    q = rand(sum(lengths_q), 8, 64, grad=True)
    k, v = rand(sum(lengths_k), 2, 64, grad=True), rand(sum(lengths_k), 2, 64, grad=True)
    out = ct.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(lengths_q), max(lengths_k), causal=True)
    dout = torch.randn_like(out)
    out.backward(dout)
    for b in range(4):
        rq = slice(int(cu_q[b]), int(cu_q[b + 1]))
        rk = slice(int(cu_k[b]), int(cu_k[b + 1]))
        if rq.stop == rq.start:
            continue
        qs, ks, vs = (x.detach()[r][None].clone().requires_grad_() for x, r in ((q, rq), (k, rk), (v, rk)))
        ref = ct.flash_attn_func(qs, ks, vs, causal=True)
        ref.backward(dout[rq][None])
        assert torch.allclose(out[rq], ref[0], atol=1e-2, rtol=0), b
        for g, r, want in ((q.grad, rq, qs.grad), (k.grad, rk, ks.grad), (v.grad, rk, vs.grad)):
            assert torch.allclose(g[r], want[0], atol=2e-2, rtol=0), b


def test_varlen_unchecked_lengths_give_the_same_values_and_gradients():
    """check_lengths=False (no host copy of cu_seqlens) changes nothing but the synchronisation."""
    lengths = [37, 0, 1, 130]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    qkv = rand(sum(lengths), 3 * 4, 64).reshape(-1, 3, 4, 64)
    results = []
    for checked in (True, False):
        x = qkv.detach().clone().requires_grad_()
        out = ct.flash_attn_varlen_qkvpacked_func(x, cu, max(lengths), causal=True, deterministic=True,
                                                  check_lengths=checked)
        out.backward(torch.ones_like(out))
        results.append((out, x.grad))
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("compiled", [False, True])
def test_varlen_dropout_is_cuflash_attention_varlen_with_the_drawn_seed(compiled):
    """flash_attn_varlen_func(dropout_p=...) draws its seed from torch's generator and then is
    exactly cuflash.attention_varlen with that seed: out and the deterministic gradients bitwise."""
    import cupy as cp

    import cuflash

    lengths_q, lengths_k = [37, 0, 130], [64, 5, 200]
    cu_q = torch.tensor([0, *torch.tensor(lengths_q).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    cu_k = torch.tensor([0, *torch.tensor(lengths_k).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    q = rand(sum(lengths_q), 4, 64, grad=True)
    k, v = rand(sum(lengths_k), 2, 64, grad=True), rand(sum(lengths_k), 2, 64, grad=True)
    dout = rand(sum(lengths_q), 4, 64)
    fn = ct.flash_attn_varlen_func
    if compiled:
        fn = torch.compile(lambda *a, **kw: ct.flash_attn_varlen_func(*a, **kw), fullgraph=True)
    seed = _drawn_seed(11)
    torch.manual_seed(11)
    out = fn(q, k, v, cu_q, cu_k, 130, 200, dropout_p=0.25, causal=True, deterministic=True)
    out.backward(dout)
    cq, ck, cv, cdo, ccu_q, ccu_k = (cp.from_dlpack(t.detach()) for t in (q, k, v, dout, cu_q, cu_k))
    want, lse = cuflash.attention_varlen(cq, ck, cv, ccu_q, ccu_k, 130, 200, dropout_p=0.25, seed=seed, causal=True,
                                         return_lse=True)
    grads = cuflash.attention_varlen_backward(cdo, cq, ck, cv, want, lse, ccu_q, ccu_k, 130, 200, dropout_p=0.25,
                                              seed=seed, causal=True, deterministic=True)
    for n, got, w in zip(("out", "dq", "dk", "dv"), (out.detach(), q.grad, k.grad, v.grad), (want, *grads)):
        assert torch.equal(got, torch.from_dlpack(w)), n
    with torch.no_grad():
        other = fn(q, k, v, cu_q, cu_k, 130, 200, dropout_p=0.25, causal=True)
    assert not torch.equal(other, out.detach())  # the next call draws another mask


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("call, exc, match", [
    (lambda: ct.flash_attn_func(rand(1, 8, 2, 64).cpu(), rand(1, 8, 2, 64), rand(1, 8, 2, 64)), ValueError,
     "q must be a CUDA tensor"),
    (lambda: ct.flash_attn_func(rand(1, 8, 2, 64), rand(1, 8, 2, 64), rand(1, 8, 2, 64), dropout_p=1.0),
     ValueError, r"dropout_p must be in \[0, 1\)"),
    (lambda: ct.flash_attn_func(rand(1, 8, 2, 64), rand(1, 8, 2, 64), rand(1, 8, 2, 64), dropout_p="x"),
     TypeError, "dropout_p must be a number"),
    (lambda: ct.flash_attn_varlen_func(rand(8, 2, 64), rand(8, 2, 64), rand(8, 2, 64),
                                       torch.tensor([0, 8], dtype=torch.int32, device="cuda"),
                                       torch.tensor([0, 8], dtype=torch.int32, device="cuda"), 8, 8, dropout_p=-0.1),
     ValueError, r"dropout_p must be in \[0, 1\)"),
    (lambda: ct.flash_attn_varlen_func(rand(8, 2, 64), rand(8, 2, 64), rand(8, 2, 64),
                                       torch.tensor([0, 8], dtype=torch.int32, device="cuda"),
                                       torch.tensor([0, 8], dtype=torch.int32, device="cuda"), 8, 8,
                                       block_table=torch.zeros((1, 1), dtype=torch.int32, device="cuda")),
     NotImplementedError, "block_table"),
    (lambda: ct.flash_attn_func(rand(1, 8, 2, 64).double(), rand(1, 8, 2, 64), rand(1, 8, 2, 64)), TypeError,
     "q has dtype float64"),
    (lambda: ct.flash_attn_func(rand(1, 8, 3, 64), rand(1, 8, 2, 64), rand(1, 8, 2, 64)), ValueError,
     "nheads of q"),
    (lambda: ct.flash_attn_func(rand(1, 8, 2, 64, grad=True), rand(1, 8, 2, 64), rand(1, 8, 2, 64),
                                window_size=(-3, 0)), ValueError, "window_size"),
    (lambda: ct.flash_attn_varlen_func(rand(8, 2, 64), rand(8, 2, 64), rand(8, 2, 64), None, None, 8, 8),
     TypeError, "cu_seqlens_q must be a torch.Tensor"),
    (lambda: ct.flash_attn_varlen_func(rand(8, 2, 64), rand(8, 2, 64), rand(8, 2, 64),
                                       torch.tensor([0, 5, 3], dtype=torch.int32, device="cuda"),
                                       torch.tensor([0, 4, 8], dtype=torch.int32, device="cuda"), 8, 8),
     ValueError, "cu_seqlens_q must be non-decreasing"),
    (lambda: ct.flash_attn_with_kvcache(rand(1, 1, 2, 64), rand(1, 8, 2, 64), rand(1, 8, 2, 64),
                                        cache_seqlens=torch.ones(1, dtype=torch.int32, device="cuda"),
                                        block_table=torch.full((1, 1), 1, dtype=torch.int32, device="cuda")),
     ValueError, r"block_table entries must be in \[0, 1\)"),
    (lambda: ct.flash_attn_with_kvcache(rand(2, 1, 2, 64), rand(2, 8, 2, 64), rand(2, 8, 2, 64),
                                        cache_seqlens=torch.ones(3, dtype=torch.int32, device="cuda")),
     ValueError, r"cache_seqlens must be an int or a contiguous int32 array of shape \(2,\)"),
])
def test_bad_input_names_the_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ---------------------------------------------------------------- custom ops, compile, graphs


def test_opcheck_forward_and_backward_ops():
    q, k, v = rand(1, 40, 4, 64, grad=True), rand(1, 72, 2, 64, grad=True), rand(1, 72, 2, 64, grad=True)
    sink = torch.linspace(-1.0, 2.0, 4, device="cuda").requires_grad_()
    bias = torch.randn(1, 4, 40, 72, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    for args in ((q, k, v, None, None, 0.125, True, -1, 0, 0.0, False, 0.0),
                 (q, k, v, None, sink, 0.125, False, 16, 4, 10.0, False, 0.0),
                 (q, k, v, None, None, 0.125, True, -1, 0, 0.0, False, 0.25),
                 (q, k, v, None, None, 0.125, True, -1, 0, 0.0, False, 0.0, bias)):
        dropout_p = args[11]
        if not dropout_p:  # opcheck repeats the call and compares: a fresh dropout seed each time differs
            torch.library.opcheck(torch.ops.cuflash.fwd.default, args)
        out, lse, rng = torch.ops.cuflash.fwd(*args)
        assert rng.numel() == (2 if dropout_p else 0)
        assert rng.device == (q.device if dropout_p else torch.device("cpu"))  # the kernels read the seed there
        dout = torch.randn_like(out)
        bargs = (dout, q.detach(), k.detach(), v.detach(), out.detach(), lse.detach(), None, None,
                 None if args[4] is None else sink.detach(), rng, *args[5:12])
        if len(args) > 12:  # the bias, with its gradient
            bargs += (bias.detach(), True)
        torch.library.opcheck(torch.ops.cuflash.bwd.default, bargs)


class TinyAttention(torch.nn.Module):
    def __init__(self, dim=256, heads=4):
        super().__init__()
        self.heads = heads
        self.qkv = torch.nn.Linear(dim, 3 * dim, bias=False)
        self.proj = torch.nn.Linear(dim, dim, bias=False)

    def forward(self, x, attention=None):
        b, s, d = x.shape
        qkv = self.qkv(x).view(b, s, 3, self.heads, d // self.heads)
        out = ct.flash_attn_qkvpacked_func(qkv, causal=True)
        return self.proj(out.reshape(b, s, d))


def test_torch_compile_fullgraph_matches_eager():
    torch.manual_seed(0)
    model = TinyAttention().cuda().to(torch.bfloat16)
    x = rand(2, 128, 256)
    eager = model(x)
    eager.float().square().mean().backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True)
    got = compiled(x)
    got.float().square().mean().backward()
    assert torch.allclose(got, eager, atol=1e-2, rtol=0)
    for a, b in zip((p.grad for p in model.parameters()), eager_grads):
        assert torch.allclose(a, b, atol=2e-2, rtol=0)


def test_torch_compile_fullgraph_with_a_bias_matches_eager():
    q, k, v = rand(2, 64, 4, 64, grad=True), rand(2, 80, 2, 64, grad=True), rand(2, 80, 2, 64, grad=True)
    bias = torch.randn(1, 4, 64, 80, device="cuda", dtype=torch.bfloat16, requires_grad=True)

    def loss(q, k, v, bias):
        return ct.flash_attn_func(q, k, v, causal=True, bias=bias).float().square().mean()

    grads = [torch.autograd.grad(f(q, k, v, bias), (q, k, v, bias))
             for f in (loss, torch.compile(loss, fullgraph=True))]
    for a, b in zip(*grads):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-2, rtol=0)


def test_cuda_graph_replays_forward_and_backward():
    q, k, v = rand(2, 128, 4, 64, grad=True), rand(2, 128, 4, 64, grad=True), rand(2, 128, 4, 64, grad=True)
    dout = rand(2, 128, 4, 64)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up (compiles, caches) outside the capture
        for _ in range(2):
            ct.flash_attn_func(q, k, v, causal=True).backward(dout)
    torch.cuda.current_stream().wait_stream(side)
    for t in (q, k, v):
        t.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = ct.flash_attn_func(q, k, v, causal=True)
        out.backward(dout)
    for _ in range(2):  # new inputs in the captured buffers, then replay
        with torch.no_grad():
            for t in (q, k, v, dout):
                t.copy_(torch.randn_like(t))
        graph.replay()
        torch.cuda.synchronize()
        q2, k2, v2 = (t.detach().clone().requires_grad_() for t in (q, k, v))
        ref = ct.flash_attn_func(q2, k2, v2, causal=True)
        ref.backward(dout)
        assert torch.equal(out, ref)
        for a, b in zip((q.grad, k.grad, v.grad), (q2.grad, k2.grad, v2.grad)):
            assert torch.allclose(a, b, atol=1e-2, rtol=0)


def test_cuda_graph_with_dropout_draws_a_fresh_mask_each_replay():
    """A captured forward and backward with dropout draw their rng state inside the graph (on the GPU,
    from torch's CUDA generator): each replay drops other entries and is exactly cuflash.attention /
    attention_backward with the (seed, offset) it drew, out and the deterministic gradients bit for bit."""
    import cupy as cp

    import cuflash

    q, k, v = rand(2, 96, 4, 64), rand(2, 160, 2, 64), rand(2, 160, 2, 64)
    dout = rand(2, 96, 4, 64)
    fwd_args = (q, k, v, None, None, 0.125, True, -1, 0, 0.0, True, 0.2)  # causal, deterministic, dropout 0.2

    def step():
        out, lse, rng = torch.ops.cuflash.fwd(*fwd_args)
        grads = torch.ops.cuflash.bwd(dout, q, k, v, out, lse, None, None, None, rng, *fwd_args[5:12])
        return out, rng, grads[:3]

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up (compiles, caches) outside the capture
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, rng, grads = step()
    states = []
    cq, ck, cv, cdo = (cp.from_dlpack(t) for t in (q, k, v, dout))
    for _ in range(2):
        graph.replay()
        torch.cuda.synchronize()
        seed = tuple(rng.tolist())
        states.append(seed)
        opts = dict(softmax_scale=0.125, causal=True, dropout_p=0.2, seed=seed)
        want, lse = cuflash.attention(cq, ck, cv, return_lse=True, **opts)
        wgrads = cuflash.attention_backward(cdo, cq, ck, cv, want, lse, deterministic=True, **opts)
        assert torch.equal(out, torch.from_dlpack(want))
        for name, got, w in zip(("dq", "dk", "dv"), grads, wgrads):
            assert torch.equal(got, torch.from_dlpack(w)), name
    assert states[0] != states[1], "a replay drew the same rng state"


def test_torch_compile_reduce_overhead_with_dropout_draws_fresh_masks():
    """torch.compile(mode="reduce-overhead") runs a dropout step, forward and backward, from CUDA graphs
    (the rng state is a GPU tensor, so no host value keeps it out): every call draws another mask,
    torch.manual_seed repeats the sequence, and the gradients flow."""
    q, k, v = (rand(2, 128, 4, 64, grad=True) for _ in range(3))
    compiled = torch.compile(lambda q, k, v: ct.flash_attn_func(q, k, v, dropout_p=0.3, causal=True),
                             mode="reduce-overhead")

    def call():
        for t in (q, k, v):
            t.grad = None
        out = compiled(q, k, v)
        out.float().square().sum().backward()
        return [out.detach().clone()] + [t.grad.clone() for t in (q, k, v)]

    runs = []
    for _ in range(2):
        torch.manual_seed(5)
        runs.append([call() for _ in range(4)])
    first, second = runs
    for a, b in zip(first, second):  # the same torch seed: the same masks (dq adds by atomics: close)
        assert torch.equal(a[0], b[0])
        assert all(torch.allclose(x, y, atol=1e-2, rtol=0) for x, y in zip(a[1:], b[1:]))
    assert not torch.equal(first[2][0], first[3][0]), "two calls drew the same mask"
    assert all(torch.isfinite(t).all() for t in first[3])


def test_non_default_stream_orders_with_work_before_and_after():
    q, k, v = rand(4, 512, 8, 128), rand(4, 512, 8, 128), rand(4, 512, 8, 128)
    with torch.no_grad():
        want = ct.flash_attn_func(q, k, v, causal=True)
    stream = torch.cuda.Stream()
    a = torch.randn(4096, 4096, device="cuda")
    q2 = torch.empty_like(q)
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.no_grad():
        for _ in range(5):
            a = a @ a / 64  # long work queued before
        q2.copy_(q)
        got = ct.flash_attn_func(q2, k, v, causal=True)
        snap = got.clone()  # work queued after, on the same stream
        q2.zero_()
    torch.cuda.synchronize()
    assert torch.equal(snap, want)


def test_second_gpu():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    q, k, v = (t.to("cuda:1") for t in (rand(1, 64, 2, 64), rand(1, 64, 2, 64), rand(1, 64, 2, 64)))
    with torch.no_grad():
        out = ct.flash_attn_func(q, k, v)
        with torch.cuda.device(1):
            again = ct.flash_attn_func(q, k, v)  # GPU 1 current: the plan of the call above, replayed
    assert out.device == q.device == again.device and torch.equal(out, again)
    assert torch.equal(out.cpu(), ct.flash_attn_func(*(t.to("cuda:0") for t in (q, k, v))).cpu())


# ---------------------------------------------------------------- SDPA and transformers


def test_sdpa_flash_implementation():
    attn = torch.nn.attention
    if not hasattr(attn, "activate_flash_attention_impl"):
        pytest.skip("this torch has no flash-implementation registry (torch >= 2.10)")
    assert ct.SDPA_IMPL_NAME in attn.list_flash_attention_impls()
    q, k, v = (rand(2, 8, 256, 64, grad=True) for _ in range(3))  # (B, H, S, D)
    dout = rand(2, 8, 256, 64)

    def run():
        for t in (q, k, v):
            t.grad = None
        with attn.sdpa_kernel(attn.SDPBackend.FLASH_ATTENTION):
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        out.backward(dout)
        return [out.detach()] + [t.grad.clone() for t in (q, k, v)]

    want = run()
    attn.activate_flash_attention_impl(ct.SDPA_IMPL_NAME)
    try:
        assert attn.current_flash_attention_impl() == ct.SDPA_IMPL_NAME
        got = run()
    finally:
        attn.restore_flash_attention_impl()
    mine = ct.flash_attn_func(*(t.detach().transpose(1, 2) for t in (q, k, v)), causal=True).transpose(1, 2)
    assert torch.equal(got[0], mine)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=2e-2, rtol=0)


def _tiny_model(kind):
    transformers = pytest.importorskip("transformers")
    common = dict(vocab_size=256, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    if kind == "llama":
        config = transformers.LlamaConfig(**common)
        cls = transformers.LlamaForCausalLM
    elif kind == "mistral":
        config = transformers.MistralConfig(**common, sliding_window=48)
        cls = transformers.MistralForCausalLM
    else:
        config = transformers.Gemma2Config(**common, head_dim=64, sliding_window=48,
                                           attn_logit_softcapping=20.0, final_logit_softcapping=None)
        cls = transformers.Gemma2ForCausalLM
    torch.manual_seed(0)
    return cls(config).cuda().to(torch.bfloat16)


@pytest.mark.parametrize("kind", ["llama", "mistral", "gemma2"])
def test_transformers_models_match_sdpa(kind):
    """Logits and three SGD steps' losses against transformers' SDPA attention (eager for Gemma 2,
    whose softcap SDPA does not implement)."""
    model = _tiny_model(kind)
    peer = "eager" if kind == "gemma2" else "sdpa"
    name = ct.register_transformers()
    ids = torch.randint(0, 256, (2, 160), device="cuda")
    losses = {}
    logits = {}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for impl in (peer, name):
        model.load_state_dict(state)
        model.set_attn_implementation(impl)
        with torch.no_grad():
            logits[impl] = model(ids).logits.float()
        opt = torch.optim.SGD(model.parameters(), lr=1e-2)
        losses[impl] = []
        for _ in range(3):
            loss = model(ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses[impl].append(loss.item())
    err = (logits[name] - logits[peer]).abs().max().item()
    assert err < 0.1 * max(1.0, logits[peer].abs().max().item()), err
    assert np.allclose(losses[name], losses[peer], rtol=2e-2), losses


def test_transformers_padded_batch_matches_sdpa():
    """A left-padded batch (transformers' generation layout) runs through varlen and matches SDPA on the
    real tokens."""
    model = _tiny_model("llama")
    name = ct.register_transformers()
    ids = torch.randint(0, 256, (3, 96), device="cuda")
    mask = torch.ones_like(ids)
    mask[0, :40] = 0  # left padding of different lengths
    mask[1, :7] = 0
    logits = {}
    with torch.no_grad():
        for impl in ("sdpa", name):
            model.set_attn_implementation(impl)
            logits[impl] = model(ids, attention_mask=mask).logits.float()
    real = mask.bool()
    err = (logits[name][real] - logits["sdpa"][real]).abs().max().item()
    assert err < 0.1 * max(1.0, logits["sdpa"][real].abs().max().item()), err


def test_repeated_kvcache_decode_steps_replay_their_plan():
    """flash_attn_with_kvcache with an int32 cache_seqlens tensor and check_indices=False: the
    second call replays the first's launches (api launch plans) and gives the same out, lse and caches."""
    from cuflash import api

    batch, page, pages = 2, 16, 8
    q = rand(batch, 1, 8, 128)
    k_cache, v_cache = rand(pages, page, 2, 128), rand(pages, page, 2, 128)
    k, v = rand(batch, 1, 2, 128), rand(batch, 1, 2, 128)
    block_table = torch.randperm(pages, device="cuda")[:batch * 3].reshape(batch, 3).to(torch.int32)
    lengths = torch.tensor([7, 33], dtype=torch.int32, device="cuda")
    plans = len(api._PLANS)

    def step():
        return ct.flash_attn_with_kvcache(q, k_cache, v_cache, k, v, cache_seqlens=lengths, block_table=block_table,
                                          causal=True, return_softmax_lse=True, check_indices=False)

    out, lse = step()
    caches = k_cache.clone(), v_cache.clone()
    assert len(api._PLANS) == plans + 1
    out2, lse2 = step()
    assert torch.equal(out, out2) and torch.equal(lse, lse2)
    assert torch.equal(k_cache, caches[0]) and torch.equal(v_cache, caches[1])
