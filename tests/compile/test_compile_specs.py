"""Every declared kernel (the default feature sets, every dtype) compiles with NVRTC for sm_80
(A100's 163 KB), sm_86, sm_89 and sm_120 (the 99 KB RTX / L40 / RTX 50-class GPUs, with their own
tiles), sm_90a and sm_100 (B200, with its own lists: specs.ARCH_CLASS_TILES), no GPU needed;
.ci/run runs this under NVRTC 12.x, the newest 13.x and 13.0. A few kernels spill on sm_120 and
sm_100, which ones depending on the NVRTC (KNOWN_SPILLS).

The real specs go through cuflash.compile.cache.compile_many, the code path of
`cuflash compile`, once per session (in parallel processes) into a private
cache folder; each (spec, arch) is then one test. The compile machinery itself
is tested on toy kernels (tests/conftest.py), independent of the real ones.
"""
from __future__ import annotations

import dataclasses

import pytest

from cuflash import support
from cuflash.compile import cache, nvrtc
from cuflash.compile.nvrtc import CompileError

SPECS = support.declared_specs(dtypes=support.SUPPORTED_DTYPES)  # `cuflash compile`'s set, plus float32
ARCHS = ("sm_80", "sm_86", "sm_89", "sm_90a", "sm_100", "sm_120")

#: (spec name, arch) pairs that spill under some NVRTC (issue 15). The float32 backward's tiles for
#: 99 KB GPUs run at 252-255 registers and sm_120's ptxas needs a few more: 4-12 bytes, which of
#: them depends on the NVRTC (measured under 12.9 and 13.5). A lighter tile that splits d across
#: four warps compiles at 160-203 registers without spills, but at D = 128 it needs 111 KB, and
#: none is timed on a GPU yet, so these stay and are reported as expected failures when they spill.
#: The 16-bit d160 causal deterministic backward for 99 KB GPUs spills 4 bytes on sm_120 under
#: NVRTC 13.0 (which torch's CUDA 13.0 wheels install), not under 12.9 or 13.5.
#: Under NVRTC 13.5 only (clean under 12.9 and 13.0), the Hopper d128 causal deterministic backward
#: holds one or two values from its prologue to its epilogue in local memory since the ping-pong
#: loop joined its source (bench/NOTES.md b5): a store before the main loop and loads after it,
#: none inside.
#: Under NVRTC 13.5 only (clean under 12.9 and 13.0), the 16-bit d128 causal forward spills 44 bytes
#: on sm_100: its one 16-bit d128 tile at 255 registers. Five other tiles compile clean there under
#: both (bench/NOTES.md g2), but none is timed yet, so it stays until one is (issue 15).
#: Under NVRTC 13.0 only (clean under 12.9 and 13.5), seven deterministic backwards spill 4 bytes on
#: sm_100 at 255 registers: 16-bit d224 (full and causal) and d256 causal, float32 d96 causal
#: (bench/NOTES.md g3).
KNOWN_SPILLS = {
    ("bwd90_bf16_d128_causal_det_s2", "sm_90a"),
    ("bwd90_fp16_d128_causal_det_s2", "sm_90a"),
    ("fwd_bf16_d128_causal_m128n64w4", "sm_100"),
    ("fwd_fp16_d128_causal_m128n64w4", "sm_100"),
    ("bwd_bf16_d224_full_det_m64n64w8s2k4q4u2", "sm_100"),
    ("bwd_fp16_d224_full_det_m64n64w8s2k4q4u2", "sm_100"),
    ("bwd_bf16_d224_causal_det_m64n64w8s2k4q4u2", "sm_100"),
    ("bwd_fp16_d224_causal_det_m64n64w8s2k4q4u2", "sm_100"),
    ("bwd_bf16_d256_causal_det_m64n64w8s2k2q2u2t", "sm_100"),
    ("bwd_fp16_d256_causal_det_m64n64w8s2k2q2u2t", "sm_100"),
    ("bwd_fp32_d96_causal_det_m16n32w2s2k2q1u1", "sm_100"),
    ("bwd_bf16_d160_causal_det_m32n64w4s4k4q2u2", "sm_120"),
    ("bwd_fp16_d160_causal_det_m32n64w4s4k4q2u2", "sm_120"),
    ("bwd_fp32_d96_causal_det_m16n32w2s2k2q1u2", "sm_120"),
    ("bwd_fp32_d128_full_m16n32w2s2k2q1p32u2", "sm_120"),
    ("bwd_fp32_d128_full_det_m16n32w2s2k2q1p32u2", "sm_120"),
    ("bwd_fp32_d128_causal_det_m16n32w2s2k2q1p32u2", "sm_120"),
}


@pytest.fixture(scope="module")
def outcomes(compile_all):
    """(spec name, requested arch) -> Outcome for every declared spec and arch, compiled for real (force)."""
    return compile_all(SPECS, ARCHS)


PAIRS = [(spec, arch) for spec in SPECS for arch in ARCHS if cache.builds_for(spec, arch)]


@pytest.mark.parametrize("spec,arch", PAIRS, ids=[f"{s.name}-{a}" for s, a in PAIRS])
def test_declared_spec_compiles(outcomes, spec, arch):
    outcome = outcomes[(spec.name, arch)]
    assert outcome.error is None, outcome.error
    result = outcome.result
    assert not result.cached
    assert 0 < result.registers <= 255
    assert not result.wgmma_serialized, f"ptxas serialised the wgmma products of {spec.name} (bench/NOTES.md b5)"
    if outcome.spills_forbidden and (spec.name, arch) in KNOWN_SPILLS:
        pytest.xfail(f"known spill on {arch} ({result.spill_stores} bytes stored), issue 15")
    assert not outcome.spills_forbidden, (
        f"{spec.name} for {result.arch} spills ({result.spill_stores} bytes stored, "
        f"{result.spill_loads} loaded) but allow_spills is False"
    )
    assert result.arch == cache.target_arch(spec, cache.parse_arch(arch))


def test_sm90_specs_build_only_for_sm90a():
    sm90 = [s for s in SPECS if getattr(s, "compute_capabilities", None)]
    assert sm90, "the Hopper forward is declared"
    assert all(cache.builds_for(s, "sm_90a") and not cache.builds_for(s, "sm_80") for s in sm90)
    assert all(cache.target_arch(s, (9, 0)) == "sm_90a" for s in sm90)


def test_known_spills_are_declared_kernels():
    builds = {(s.name, a) for s, a in PAIRS}
    assert KNOWN_SPILLS <= builds, KNOWN_SPILLS - builds


def test_declared_specs_have_unique_names():
    names = [s.name for s in SPECS]
    assert len(names) == len(set(names))


# ---------------------------------------------------------------- the machinery, on toy kernels


def test_compile_many_in_processes_fills_the_cache(toy_kernels, toy_spec):
    from cuflash.specs import CAUSAL, FwdSpec

    specs, archs = [toy_spec, FwdSpec.for_problem("fp16", 128, CAUSAL)], ("sm_80", "sm_90a")
    first = list(cache.compile_many(specs, archs, jobs=2))
    assert len(first) == 4
    assert all(o.ok and not o.result.cached and o.result.registers > 0 for o in first), first
    cubins = sorted(p.name for p in toy_kernels.cache.glob("*.cubin"))
    assert len(cubins) == 4
    assert any(name.startswith(f"{toy_spec.name}.sm_80.") for name in cubins)
    assert any(name.startswith(f"{toy_spec.name}.sm_90.") for name in cubins)  # portable kernel on an sm_90a GPU
    second = list(cache.compile_many(specs, archs, jobs=1))
    assert all(o.ok and o.result.cached for o in second)
    by_key = {(o.spec.name, o.arch): o.result.registers for o in first}
    assert {(o.spec.name, o.arch): o.result.registers for o in second} == by_key


def test_the_cubin_is_a_cuda_elf_for_the_arch(toy_kernels, toy_spec):
    result = cache.compile_to_cache(toy_spec, "sm_80")
    data = (toy_kernels.cache / f"{toy_spec.name}.sm_80.{cache.prepare(toy_spec, 'sm_80').key[:32]}.cubin").read_bytes()
    assert data[:4] == b"\x7fELF"
    assert result.registers > 0 and not result.spills


def test_compile_error_names_the_spec_and_the_header_line(toy_kernels, toy_spec):
    toy_kernels.write(header=toy_kernels.HEADER + "this is not C++;\n")
    outcome = next(cache.compile_many([toy_spec], ["sm_80"], jobs=1))
    assert not outcome.ok
    assert toy_spec.name in outcome.error
    assert 'common/toy.cuh(4)' in outcome.error  # the real file and line, thanks to #line
    with pytest.raises(CompileError) as info:
        cache.compile_to_cache(toy_spec, "sm_80")
    assert "common/toy.cuh(4)" in info.value.log


def test_spills_are_reported_and_fail_a_spec_that_forbids_them(toy_kernels, toy_spec):
    toy_kernels.write(fwd=toy_kernels.SPILLING_FWD)
    assert toy_spec.allow_spills is False
    outcome = next(cache.compile_many([toy_spec], ["sm_80"], jobs=1))
    assert outcome.error is None
    assert outcome.result.spill_stores > 0 and outcome.result.spill_loads > 0
    assert outcome.result.registers <= 32
    assert outcome.spills_forbidden and not outcome.ok


def test_serialised_wgmma_is_detected():
    # ptxas's words (NVRTC 12.9, sm_90a) for bwd_sm90_ws.cu's first ping-pong loop (bench/NOTES.md b5)
    log = ("ptxas info    : (C7515) Potential Performance Loss: wgmma.mma_async instructions are serialized due to "
           "non wgmma instructions defining accumulator registers of a wgmma between start and end of the pipeline "
           "stage in the function 'cuflash_bwd_sm90'\nptxas info    : Used 168 registers, used 16 barriers\n")
    result = nvrtc.CompileResult(name="k", arch="sm_90a", cubin=b"", log=log, registers=168, spill_stores=0,
                                 spill_loads=0, shared_bytes=0, stack_frame=0, seconds=0.0)
    assert result.wgmma_serialized
    assert not dataclasses.replace(result, log=log.splitlines()[1]).wgmma_serialized
    # `cuflash compile` fails such a kernel (status SERIAL): it runs, but about a third slower
    # (bench/NOTES.md s5), which a spill-free report would hide
    from cuflash import cli

    outcome = cache.Outcome(object(), "sm_90a", result, None)
    assert outcome.serialized and not outcome.ok and cli._status(outcome) == "SERIAL"
    fine = cache.Outcome(object(), "sm_90a", dataclasses.replace(result, log=log.splitlines()[1]), None)
    assert not fine.serialized and fine.ok and cli._status(fine) == "ok"


def test_missing_entry_is_a_compile_error(toy_kernels, toy_spec):
    toy_kernels.write(fwd=toy_kernels.FWD.replace("cuflash_fwd", "some_other_name"))
    with pytest.raises(CompileError, match="no kernel 'cuflash_fwd'.*some_other_name"):
        cache.compile_to_cache(toy_spec, "sm_80")


def test_key_covers_headers_options_and_arch(toy_kernels, toy_spec, monkeypatch):
    base = cache.prepare(toy_spec, "sm_80").key
    assert cache.prepare(toy_spec, "sm_80").key == base
    assert cache.prepare(toy_spec, "sm_90").key != base
    monkeypatch.setenv("CUFLASH_NVRTC_OPTIONS", "-lineinfo")
    assert cache.prepare(toy_spec, "sm_80").key != base
    monkeypatch.delenv("CUFLASH_NVRTC_OPTIONS")
    toy_kernels.write(values=toy_kernels.VALUES + "// a comment changes the key too\n")
    assert cache.prepare(toy_spec, "sm_80").key != base


def test_header_change_recompiles(toy_kernels, toy_spec):
    assert not cache.compile_to_cache(toy_spec, "sm_80").cached
    assert cache.compile_to_cache(toy_spec, "sm_80").cached
    toy_kernels.write(values=toy_kernels.VALUES.replace("2.0f", "4.0f"))
    assert not cache.compile_to_cache(toy_spec, "sm_80").cached


def test_disabled_disk_cache_writes_nothing(toy_kernels, toy_spec, monkeypatch):
    monkeypatch.setenv("CUFLASH_DISABLE_DISK_CACHE", "1")
    assert not cache.compile_to_cache(toy_spec, "sm_80").cached
    assert not cache.compile_to_cache(toy_spec, "sm_80").cached
    assert not toy_kernels.cache.exists() or not any(toy_kernels.cache.iterdir())


def test_arch_names():
    assert cache.parse_arch("sm_80") == (8, 0)
    assert cache.parse_arch("sm_86") == (8, 6)
    assert cache.parse_arch("sm_90a") == (9, 0)
    assert cache.parse_arch("sm_100a") == (10, 0)
    assert cache.parse_arch("sm_120") == (12, 0)
    with pytest.raises(ValueError, match="sm_90a"):
        cache.parse_arch("hopper")

    class Hopper:
        arch_suffix = "a"

    assert cache.target_arch(object(), (9, 0)) == "sm_90"
    assert cache.target_arch(Hopper(), (9, 0)) == "sm_90a"


def test_nvrtc_refuses_an_unknown_arch():
    with pytest.raises(CompileError, match="sm_1"):
        nvrtc.compile_cubin('extern "C" __global__ void k() {}', "k", "sm_11")


def test_ptxas_report_parsing():
    log = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'k2' for 'sm_80'
ptxas info    : Function properties for k2
ptxas         .     17352 bytes stack frame, 36472 bytes spill stores, 61436 bytes spill loads
ptxas info    : Used 32 registers, used 0 barriers, 17352 bytes cumulative stack size, 364 bytes cmem[0]
ptxas info    : Compiling entry function 'k1' for 'sm_80'
ptxas info    : Function properties for k1
ptxas         .     256 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 72 registers, used 1 barriers, 1024 bytes smem, 364 bytes cmem[0]
ptxas info    : Function properties for _Z6helperPfi
ptxas         .     8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads
"""
    k1 = nvrtc.parse_ptxas(log, "k1")
    assert k1 == dict(registers=72, shared_bytes=1024, stack_frame=264, spill_stores=4, spill_loads=4)
    k2 = nvrtc.parse_ptxas(log, "k2")
    assert (k2["registers"], k2["spill_stores"], k2["spill_loads"]) == (32, 36476, 61440)
    with pytest.raises(CompileError, match="k1, k2"):
        nvrtc.parse_ptxas(log, "k3")
