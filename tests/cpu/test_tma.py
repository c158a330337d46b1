"""TMA tensor maps (cuflash/tma.py) without a GPU: which arrays TMA can address, the map each
gets, and which forward calls take maps (launch.fwd_tensor_maps). The encoding itself is the
driver's; the GPU tests run it (tests/gpu/test_forward.py)."""
from __future__ import annotations

import pytest

from cuflash import launch, tma
from cuflash.specs import Features, FwdSm90Spec, FwdSpec


def contiguous(shape):
    strides, size = [], 1
    for n in reversed(shape):
        strides.append(size)
        size *= n
    return tuple(reversed(strides))


def test_a_contiguous_array_maps_to_d_seqlen_heads_batch():
    shape = (2, 1000, 16, 128)
    m = tma.tile_map(shape, contiguous(shape), 1 << 20, 80, 64)
    assert m == tma.TensorMap((128, 1000, 16, 2), (16 * 128 * 2, 128 * 2, 1000 * 16 * 128 * 2), (64, 80, 1, 1))


@pytest.mark.parametrize("bucket, atom", [(32, 32), (64, 64), (96, 32), (128, 64), (160, 32), (192, 64), (224, 32),
                                          (256, 64)])
def test_the_box_is_one_swizzle_atom_wide(bucket, atom):
    shape = (1, 64, 4, bucket - 8)  # d below the compiled D: the box reaches past it, TMA fills zeros
    m = tma.tile_map(shape, contiguous(shape), 1 << 20, 128, tma.atom_columns(bucket))
    assert m.box == (atom, 128, 1, 1) and m.dims[0] == bucket - 8
    assert tma.atom_columns(bucket) == atom


def test_unit_dims_take_a_stride_tma_accepts():
    # A batch of 1 and one head may arrive with any stride (0, or a view's leftover): never stepped over.
    m = tma.tile_map((1, 300, 1, 64), (0, 64, 7, 1), 1 << 20, 128, 64)
    assert m.strides == (128, 300 * 128, 300 * 128)


@pytest.mark.parametrize("shape, strides, ptr, why", [
    ((2, 64, 4, 64), (-64 * 4 * 64, -4 * 64, 64, 1), 1 << 20, "reversed rows"),
    ((2, 64, 4, 64), (64 * 4 * 72, 4 * 72 + 4, 72, 1), 1 << 20, "a row stride of 8 bytes past 16"),
    ((2, 64, 4, 64), contiguous((2, 64, 4, 64)), (1 << 20) + 8, "an address 8 bytes off 16"),
    ((2, 64, 4, 64), (1 << 39, 4 * 64, 64, 1), 1 << 20, "a batch stride of 2^40 bytes"),
    ((2, 64, 4, 64), (64 * 4 * 128, 4 * 128, 128, 2), 1 << 20, "columns not contiguous"),
])
def test_arrays_tma_cannot_address_get_no_map(shape, strides, ptr, why):
    assert tma.tile_map(shape, strides, ptr, 128, 64) is None, why


def ref(shape, ptr, dtype="bfloat16"):
    return launch.Ref(ptr, shape, contiguous(shape), dtype, 0)


@pytest.fixture
def encoder(monkeypatch):
    monkeypatch.setattr(tma, "available", lambda: True)
    monkeypatch.delenv("CUFLASH_TMA", raising=False)


def test_the_warp_specialised_forward_gets_maps_of_q_k_v_o(encoder):
    spec = FwdSm90Spec.for_problem("bf16", 128)
    assert spec.tiles.stages
    q, k, v = ref((2, 5000, 8, 128), 1 << 30), ref((2, 7000, 2, 128), 1 << 31), ref((2, 7000, 2, 128), 1 << 32)
    out = ref((2, 5000, 8, 128), 1 << 33)
    maps = launch.fwd_tensor_maps(spec, q, k, v, out, {})
    assert set(maps) == {"tma_q", "tma_k", "tma_v", "tma_o"}
    assert maps["tma_q"][0].box[1] == spec.tiles.block_m and maps["tma_k"][0].box[1] == spec.tiles.block_n
    assert maps["tma_o"][0].box == (64, 64, 1, 1)  # one consumer warpgroup's rows, one swizzle atom's columns
    assert [ptr for _, ptr in maps.values()] == [q.ptr, k.ptr, v.ptr, out.ptr]
    assert maps["tma_k"][0].dims == (128, 7000, 2, 2)


def test_calls_that_keep_cp_async(encoder, monkeypatch):
    q, k, v = ref((2, 5000, 8, 128), 1 << 30), ref((2, 7000, 2, 128), 1 << 31), ref((2, 7000, 2, 128), 1 << 32)
    o = ref((2, 5000, 8, 128), 1 << 33)
    ws = FwdSm90Spec.for_problem("bf16", 128)
    assert launch.fwd_tensor_maps(ws, q, k, v, o, {})
    small = [x._replace(shape=(1, 256, *x.shape[2:])) for x in (q, k, v, o)]  # 4 b h s_q s_k d below tma.MIN_FLOP
    assert not launch.fwd_tensor_maps(ws, *small, {})
    assert not launch.fwd_tensor_maps(FwdSpec.for_problem("bf16", 128), q, k, v, o, {})  # the portable kernel
    reversed_k = k._replace(strides=(k.strides[0], -k.strides[1], *k.strides[2:]))
    assert not launch.fwd_tensor_maps(ws, q, reversed_k, v, o, {})  # one array TMA cannot address: none of them
    odd_out = o._replace(strides=(o.strides[0], o.strides[1] + 4, *o.strides[2:]))  # rows 8 bytes off 16
    assert not launch.fwd_tensor_maps(ws, q, k, v, odd_out, {})
    monkeypatch.setenv("CUFLASH_TMA", "0")
    assert not launch.fwd_tensor_maps(ws, q, k, v, o, {})
    monkeypatch.setenv("CUFLASH_TMA", "1")
    assert launch.fwd_tensor_maps(ws, q, k, v, o, {})
    monkeypatch.setattr(tma, "available", lambda: False)  # a driver without the encoder
    assert not launch.fwd_tensor_maps(ws, q, k, v, o, {})


def test_the_hopper_backwards_get_maps_of_q_k_v_dout(encoder):
    from cuflash.specs import BwdSm90Spec

    q, k, v = ref((2, 5000, 8, 128), 1 << 30), ref((2, 7000, 2, 128), 1 << 31), ref((2, 7000, 2, 128), 1 << 32)
    dout = ref((2, 5000, 8, 128), 1 << 33)
    for d, atom in ((128, 64), (64, 32)):  # each consumer's D / 2 columns start on an atom
        spec = BwdSm90Spec("bf16", d, Features.parse(""), False)
        assert spec.tiles.stages and spec.swizzle_atom == atom
        assert spec.defines()["CUFLASH_SWIZZLE_ATOM"] == atom
        x = [r._replace(shape=(*r.shape[:3], d)) for r in (q, k, v, dout)]
        maps = launch.bwd_tensor_maps(spec, *x)
        assert set(maps) == {"tma_q", "tma_k", "tma_v", "tma_do"}
        assert {m.box for m, _ in maps.values()} == {(atom, 64, 1, 1), (atom, 128, 1, 1)}
        assert maps["tma_do"][1] == dout.ptr
    # bwd_sm90.cu (d256: 64 keys per CTA; bias and dropout at d128): boxes of its AW columns
    for d, features, key_rows in ((256, "", 64), (128, "dropout", 128)):
        spec = BwdSm90Spec("bf16", d, Features.parse(features), False)
        assert not spec.tiles.stages and spec.tiles.block_n == key_rows
        x = [r._replace(shape=(*r.shape[:3], d)) for r in (q, k, v, dout)]
        maps = launch.bwd_tensor_maps(spec, *x)
        assert {m.box for m, _ in maps.values()} == {(64, 64, 1, 1), (64, key_rows, 1, 1)}


def test_a_varlen_backward_maps_every_sequence_as_one_batch(encoder):
    # bwd_sm90_ws.cu loads a block inside its sequence by TMA, its rows counted over the whole batch;
    # bwd_sm90.cu (d256) copies varlen blocks with cp.async and gets no maps.
    from cuflash.specs import BwdSm90Spec

    total_q, total_k = 20000, 30000
    # as api.run_varlen_backward passes them: (batch, the longest sequence, heads, d), batch stride 0
    q = launch.Ref(1 << 30, (4, 8000, 8, 128), (0, 8 * 128, 128, 1), "bfloat16", 0)
    k = launch.Ref(1 << 31, (4, 9000, 2, 128), (0, 2 * 128, 128, 1), "bfloat16", 0)
    spec = BwdSm90Spec("bf16", 128, Features.parse("varlen"), False)
    assert spec.tiles.stages
    maps = launch.bwd_tensor_maps(spec, q, k, k, q, (total_q, total_k))
    assert set(maps) == {"tma_q", "tma_k", "tma_v", "tma_do"}
    assert maps["tma_q"][0].dims == (128, total_q, 8, 1) and maps["tma_k"][0].dims == (128, total_k, 2, 1)
    assert {m.box for m, _ in maps.values()} == {(64, 64, 1, 1), (64, 128, 1, 1)}
    d256 = [r._replace(shape=(*r.shape[:3], 256), strides=(0, r.shape[2] * 256, 256, 1)) for r in (q, k)]
    assert not launch.bwd_tensor_maps(BwdSm90Spec("bf16", 256, Features.parse("varlen"), False), *d256, *d256[::-1],
                                      (total_q, total_k))


def test_a_varlen_forward_maps_every_sequence_as_one_batch(encoder):
    spec = FwdSm90Spec.for_problem("bf16", 128, Features.parse("varlen"))
    total_q, total_k = 20000, 30000
    # as api.run_varlen_forward passes them: (batch, rows, heads, d) with batch stride 0
    q = launch.Ref(1 << 30, (4, 8000, 8, 128), (0, 8 * 128, 128, 1), "bfloat16", 0)
    k = launch.Ref(1 << 31, (4, total_k, 2, 128), (0, 2 * 128, 128, 1), "bfloat16", 0)
    maps = launch.fwd_tensor_maps(spec, q, k, k, q, {"total_q": total_q, "total_k": total_k})
    assert maps["tma_q"][0].dims == (128, total_q, 8, 1) and maps["tma_k"][0].dims == (128, total_k, 2, 1)
    assert "tma_o" not in maps  # a varlen O leaves by 16-byte stores


def bias_fields(shape, ptr=1 << 34, row_stride=None):
    """The bias fields of api.Options for a bias of 4-D shape `shape` broadcast to (2, 8, 5000, 7000):
    keys contiguous, stride 0 on each broadcast dim (api.check_bias's view)."""
    strides = list(contiguous(shape))
    if row_stride is not None:
        strides[2], strides[1], strides[0] = row_stride, row_stride * shape[2], row_stride * shape[2] * shape[1]
    full = (2, 8, 5000, 7000)
    strides = [0 if n == 1 and f > 1 else s for n, f, s in zip(shape, full, strides)]
    return {"bias": ptr, "bias_batch_stride": strides[0], "bias_head_stride": strides[1],
            "bias_row_stride": strides[2]}


@pytest.mark.parametrize("shape, dims", [((2, 8, 5000, 7000), (7000, 5000, 8, 2)),
                                         ((1, 8, 5000, 7000), (7000, 5000, 8, 1)),
                                         ((2, 1, 5000, 7000), (7000, 5000, 1, 2)),
                                         ((1, 1, 5000, 7000), (7000, 5000, 1, 1))],
                         ids=["b,h,s,s", "1,h,s,s", "b,1,s,s", "1,1,s,s"])
def test_a_bias_with_query_rows_is_loaded_by_tma(encoder, monkeypatch, shape, dims):
    # kernels_cu/common/bias_tile.cuh load: boxes of 64 keys x Br queries; a broadcast dim is one entry
    # (the kernel asks for index 0 there), so the map never steps over a stride of 0.
    spec = FwdSm90Spec.for_problem("bf16", 128, Features.parse("bias"))
    assert spec.tiles.stages
    q, k, v = ref((2, 5000, 8, 128), 1 << 30), ref((2, 7000, 2, 128), 1 << 31), ref((2, 7000, 2, 128), 1 << 32)
    out = ref((2, 5000, 8, 128), 1 << 33)
    fields = bias_fields(shape)
    maps = launch.fwd_tensor_maps(spec, q, k, v, out, fields)
    assert set(maps) == {"tma_q", "tma_k", "tma_v", "tma_o", "tma_bias"}
    m, ptr = maps["tma_bias"]
    assert ptr == fields["bias"] and m.dims == dims and m.box == (64, spec.tiles.block_m, 1, 1)
    assert m.strides[0] == 7000 * 2 and all(s > 0 and s % 16 == 0 for s in m.strides)
    launched = []
    monkeypatch.setattr(launch, "sm_resources", lambda device: (132, 233472))  # an H100 / H200
    monkeypatch.setattr(launch, "run", lambda spec, device, grid, block, smem, packer, f, stream, maps=None:
                        launched.append((f["tma"], set(maps))))
    launch.forward(spec, q, k, v, out, None, fields, 0)
    assert launched == [(3, set(maps))]  # params.cuh FwdParams tma: bit 1 for tma_bias


@pytest.mark.parametrize("case", ["per_key", "odd_rows", "unaligned", "no_bias_switch"])
def test_biases_tma_cannot_take_are_copied_by_the_producer(encoder, monkeypatch, case):
    spec = FwdSm90Spec.for_problem("bf16", 128, Features.parse("bias"))
    q, k, v = ref((2, 5000, 8, 128), 1 << 30), ref((2, 7000, 2, 128), 1 << 31), ref((2, 7000, 2, 128), 1 << 32)
    out = ref((2, 5000, 8, 128), 1 << 33)
    fields = {"per_key": bias_fields((2, 1, 1, 7000)),  # one row for every query: the kernel stages it once
              "odd_rows": bias_fields((2, 8, 5000, 7000), row_stride=7003),  # rows not 16-byte aligned
              "unaligned": bias_fields((2, 8, 5000, 7000), ptr=(1 << 34) + 2),
              "no_bias_switch": bias_fields((2, 8, 5000, 7000))}[case]
    if case == "no_bias_switch":
        spec = FwdSm90Spec.for_problem("bf16", 128)
    maps = launch.fwd_tensor_maps(spec, q, k, v, out, fields)
    assert set(maps) == {"tma_q", "tma_k", "tma_v", "tma_o"}  # Q, K, V and O still by TMA
    launched = []
    monkeypatch.setattr(launch, "sm_resources", lambda device: (132, 233472))
    monkeypatch.setattr(launch, "run", lambda spec, device, grid, block, smem, packer, f, stream, maps=None:
                        launched.append(f["tma"]))
    launch.forward(spec, q, k, v, out, None, fields, 0)
    assert launched == [1]
