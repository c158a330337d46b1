"""Launch plans (DESIGN 4c) without a GPU: a repeated plain call replays the launches of its
first call, and every launch's params are byte for byte what the validated path packs for the
same pointers. CuPy arrays here wrap fake device addresses; kernels, the driver and the
allocator are stand-ins that record what would have been launched."""
from __future__ import annotations

import ctypes
import types

import numpy as np
import pytest

cp = pytest.importorskip("cupy")

import cuflash  # noqa: E402
from cuflash import api, launch  # noqa: E402
from cuflash.compile import cache  # noqa: E402


class FakeGpu:
    """Allocations at fresh fake addresses, launches recorded as (function, grid, block, smem,
    stream, params bytes)."""

    def __init__(self):
        self.next = 1 << 32
        self.launches = []

    def empty(self, shape, dtype=np.float32, order="C"):
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        dt = np.dtype(dtype)
        size = max(int(np.prod(shape)) * dt.itemsize, 1)
        ptr, self.next = self.next, self.next + (size + 511) // 256 * 256
        mem = cp.cuda.UnownedMemory(ptr, size, None, device_id=0)
        return cp.ndarray(shape, dtype=dt, memptr=cp.cuda.MemoryPointer(mem, 0))

    def launch_kernel(self, fn, gx, gy, gz, bx, by, bz, smem, stream, argv, flags):
        buf = ctypes.c_void_p.from_address(argv).value
        size = self.sizes[buf]  # the launch reads one of the packers' buffers
        self.launches.append((fn, (gx, gy, gz), (bx, by, bz), smem, stream, ctypes.string_at(buf, size)))


@pytest.fixture
def gpu(monkeypatch):
    fake = FakeGpu()
    params = launch.params
    packers = [params.FWD, params.BWD, params.BWD_TMA, params.BWD_PREPARE, params.BWD_CONVERT, params.KV_APPEND,
               params.DECODE]
    fake.sizes = {}
    for p in packers:
        buf, _ = p.buffers()
        fake.sizes[ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))] = len(buf)
    monkeypatch.setattr(cp, "empty", fake.empty)
    monkeypatch.setattr(cp.cuda.runtime, "getDevice", lambda: 0)

    class Stream:
        ptr = 77

    monkeypatch.setattr(cp.cuda, "get_current_stream", lambda *a: Stream)
    monkeypatch.setattr(api, "_check_device", lambda device: None)
    monkeypatch.setattr(api, "_compute_capability", lambda device: {0: (9, 0)}[device])
    monkeypatch.setattr(api, "_device_smem_limit", lambda device: 232448)
    monkeypatch.setattr(launch, "sm_resources", lambda device: (132, 233472))
    monkeypatch.setattr(launch, "get_pointer", lambda spec, device, smem=0: hash(spec.name) & 0xFFFFFF)

    class Driver:
        launchKernel = staticmethod(fake.launch_kernel)

    monkeypatch.setattr(launch, "_driver", lambda: Driver)
    monkeypatch.setattr(launch, "_make_context_current", lambda device: None)
    monkeypatch.setattr(api, "_PLANS", {})
    return fake


def qkv(gpu, batch=2, seqlen_q=33, seqlen_k=70, nheads=8, nheads_kv=2, d=64, dtype="float16"):
    return (gpu.empty((batch, seqlen_q, nheads, d), dtype), gpu.empty((batch, seqlen_k, nheads_kv, d), dtype),
            gpu.empty((batch, seqlen_k, nheads_kv, d), dtype))


@pytest.mark.parametrize("options", [{}, {"causal": True}, {"window_size": (16, 4), "softcap": 30.0},
                                     {"return_lse": True}, {"out": True}])
def test_forward_replay_packs_what_the_validated_path_packs(gpu, monkeypatch, options):
    q, k, v = qkv(gpu)
    if options.get("out"):
        options = {"out": gpu.empty(q.shape, q.dtype)}  # a preallocated output
    cuflash.attention(q, k, v, **options)  # records the plan
    assert len(api._PLANS) == 1
    gpu.launches.clear()
    start = gpu.next
    cuflash.attention(q, k, v, **options)
    replayed = list(gpu.launches)
    # the validated path with the allocator at the same place gets the same addresses
    gpu.next = start
    gpu.launches.clear()
    monkeypatch.setattr(api, "recorded_plan", lambda key: None)
    cuflash.attention(q, k, v, **options)
    assert len(replayed) == 1
    assert gpu.launches == replayed


def test_forward_replay_encodes_the_tensor_maps_at_each_calls_addresses(gpu, monkeypatch):
    from cuflash import tma

    monkeypatch.setattr(tma, "available", lambda: True)
    monkeypatch.setattr(tma, "MIN_FLOP", 0)  # these small arrays too
    monkeypatch.delenv("CUFLASH_TMA", raising=False)
    # A stand-in encoding: the address and the box rows, so the bytes show which array a map is of.
    monkeypatch.setattr(tma, "encode", lambda m, ptr: (ptr.to_bytes(8, "little") + m.box[1].to_bytes(8, "little")) * 8)
    cuflash.attention(*qkv(gpu))  # records the plan
    q, k, v = qkv(gpu)  # other arrays of the same kind: the plan replays with their addresses
    gpu.launches.clear()
    start = gpu.next
    cuflash.attention(q, k, v)
    replayed = list(gpu.launches)
    gpu.next = start
    gpu.launches.clear()
    monkeypatch.setattr(api, "recorded_plan", lambda key: None)
    cuflash.attention(q, k, v)
    assert len(replayed) == 1 and gpu.launches == replayed
    fields = launch.params.FWD_PARAMS
    packed = replayed[0][-1]
    assert int.from_bytes(packed[fields.fields["tma"][1]:][:4], "little") == 1
    for name, x in (("tma_q", q), ("tma_k", k), ("tma_v", v)):
        at = fields.fields[name][1]
        assert int.from_bytes(packed[at:at + 8], "little") == x.data.ptr, name


def test_backward_replay_packs_what_the_validated_path_packs(gpu, monkeypatch):
    q, k, v = qkv(gpu)
    out, dout, lse = gpu.empty(q.shape, q.dtype), gpu.empty(q.shape, q.dtype), gpu.empty((2, 8, 33), np.float32)
    for deterministic in (False, True):
        cuflash.attention_backward(dout, q, k, v, out, lse, causal=True, deterministic=deterministic)
        gpu.launches.clear()
        start = gpu.next
        cuflash.attention_backward(dout, q, k, v, out, lse, causal=True, deterministic=deterministic)
        replayed = list(gpu.launches)
        # the validated path with the allocator at the same place gets the same addresses
        gpu.next = start
        gpu.launches.clear()
        with monkeypatch.context() as m:
            m.setattr(api, "recorded_plan", lambda key: None)
            cuflash.attention_backward(dout, q, k, v, out, lse, causal=True, deterministic=deterministic)
        # prepare, main, dK and dV sums over the GQA group, dQ conversion
        assert len(replayed) == 5
        assert gpu.launches == replayed


@pytest.mark.parametrize("paged", [False, True])
def test_kvcache_replay_packs_what_the_validated_path_packs(gpu, monkeypatch, paged):
    q = gpu.empty((2, 1, 8, 128), "float16")
    shape = (6, 16, 2, 128) if paged else (2, 96, 2, 128)
    k_cache, v_cache = gpu.empty(shape, "float16"), gpu.empty(shape, "float16")
    k, v = gpu.empty((2, 1, 2, 128), "float16"), gpu.empty((2, 1, 2, 128), "float16")
    cos, sin = gpu.empty((96, 32), "float16"), gpu.empty((96, 32), "float16")
    lengths = gpu.empty((2,), "int32")
    extra = {"block_table": gpu.empty((2, 3), "int32"), "check_indices": False} if paged else {}

    def call():
        return cuflash.attention_with_kvcache(q, k_cache, v_cache, k, v, cache_seqlens=lengths, rotary_cos=cos,
                                              rotary_sin=sin, causal=True, num_splits=2, **extra)

    call()
    assert len(api._PLANS) == 1
    gpu.launches.clear()
    start = gpu.next
    call()
    replayed = list(gpu.launches)
    gpu.next = start
    gpu.launches.clear()
    with monkeypatch.context() as m:
        m.setattr(api, "recorded_plan", lambda key: None)
        call()
    # the append (with rotary) and the split-KV decode, whose splits merge in the kernel; the same
    # bytes but the decode's epoch, which a plan keeps (kernels_cu/decode.cu step 4) and the
    # validated path draws anew
    assert len(replayed) == 2
    at = launch.params.DECODE_PARAMS.fields["epoch"][1]

    def epoch(launched):
        return int.from_bytes(launched[-1][at:at + 8], "little")

    def without_epoch(launched):
        return (*launched[:-1], launched[-1][:at] + launched[-1][at + 8:])

    assert epoch(gpu.launches[1]) != epoch(replayed[1]) and epoch(replayed[1]) > 0
    assert [without_epoch(x) for x in gpu.launches] == [without_epoch(x) for x in replayed]


def test_a_plan_is_per_kind_of_call(gpu, monkeypatch):
    q, k, v = qkv(gpu)
    cuflash.attention(q, k, v)
    cuflash.attention(q, k, v, causal=True)
    cuflash.attention(q[:, :20], k, v)  # other shape and strides
    assert len(api._PLANS) == 3
    monkeypatch.setenv("CUFLASH_DISABLE_SM90", "1")
    gpu.launches.clear()
    cuflash.attention(q, k, v)  # a new plan under the other selection: the portable kernel
    assert len(api._PLANS) == 4 and len(gpu.launches) == 1
    cuflash.attention(q, k, v, window_size=[8, 0])  # a list window: validated path, no plan
    cuflash.attention(q, k, v, learnable_sink=gpu.empty((8,), np.float32))  # not plain: no plan
    assert len(api._PLANS) == 4


def test_misaligned_or_other_device_calls_take_the_validated_path(gpu, monkeypatch):
    q, k, v = qkv(gpu)
    cuflash.attention(q, k, v)
    mem = cp.cuda.UnownedMemory(q.data.ptr + 8, q.nbytes, None, device_id=0)
    shifted = cp.ndarray(q.shape, dtype=q.dtype, memptr=cp.cuda.MemoryPointer(mem, 0))
    with pytest.raises(ValueError, match="q must start on a 16-byte boundary"):
        cuflash.attention(shifted, k, v)
    calls = []
    monkeypatch.setattr(cp.cuda.runtime, "getDevice", lambda: 1)
    monkeypatch.setattr(cp.cuda, "Device", lambda device: calls.append(device) or __import__("contextlib").nullcontext())
    cuflash.attention(q, k, v)
    assert calls == [0]  # made q's device current, as the validated path does


def test_plans_are_forgotten_with_the_loaded_kernels(gpu):
    q, k, v = qkv(gpu)
    cuflash.attention(q, k, v)
    assert api._PLANS
    cache.clear_memory_cache()
    assert not api._PLANS


def test_a_real_pointer_in_a_recording_is_an_error(gpu):
    with pytest.raises(AssertionError, match="real pointer"):
        launch.record(lambda alloc: launch.run(types.SimpleNamespace(name="k"), 0, (1, 1, 1), (1, 1, 1), 0, launch.params.FWD,
                                               {"q": launch.placeholder(0), "k": 1 << 20}, 0), 5, 0)


def test_placeholders_carry_slot_and_offset():
    assert launch._placeholder_slot(launch.placeholder(3) + 4096) == (3, 4096)
    assert launch._placeholder_slot(0) is None
