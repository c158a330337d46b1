"""The `cuflash` command, run as a user runs it (a subprocess), without a GPU."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cuflash.compile import env

REPO = Path(__file__).resolve().parents[2]


def cuflash(*args: str, **variables: str) -> subprocess.CompletedProcess:
    """python -m cuflash ARGS with the repository importable and the given CUFLASH_* variables only."""
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("CUFLASH_")}
    run_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    run_env.update(variables)
    return subprocess.run(
        [sys.executable, "-m", "cuflash", *args], env=run_env, capture_output=True, text=True, timeout=300
    )


def test_help_lists_the_commands():
    out = cuflash("--help")
    assert out.returncode == 0, out.stderr
    for command in ("compile", "info", "bench"):
        assert command in out.stdout
    assert "CUFLASH_CACHE_DIR" in out.stdout


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "cuflash"
    if not script.exists():
        pytest.skip("cuflash is not installed in this environment (running from a checkout)")
    out = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("cuflash 0.1.0"), out


def test_no_command_prints_help_and_fails():
    out = cuflash()
    assert out.returncode == 2 and "usage: cuflash" in out.stdout


def test_info(tmp_path):
    cache = tmp_path / "cache"
    out = cuflash("info", CUFLASH_CACHE_DIR=str(cache), CUFLASH_NVRTC_OPTIONS="-lineinfo")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for label in ("GPU", "CUDA driver", "CUDA runtime", "NVRTC", "CuPy", "TMA tensor maps", "cuflash", "kernels dir",
                  "cache dir"):
        assert any(line.startswith(label + " ") for line in text.splitlines()), label
    for var in env.ENV_VARS:
        assert var.name in text
    assert f"{cache} (empty)" in text
    assert "'-lineinfo'" in text
    assert str(REPO / "kernels_cu") in text
    assert "cp.async" in cuflash("info", CUFLASH_TMA="0").stdout  # off, or no encoder: either way cp.async
    if _gpu_count() == 0:
        assert "no GPU visible" in text


def test_info_names_the_kernels_of_an_arch():
    """`cuflash info --arch`: per head dim, the kernel and shared memory selection picks on such a GPU."""
    b200 = cuflash("info", "--arch", "sm_100", CUFLASH_DISABLE_SM90="0")
    assert b200.returncode == 0, b200.stderr
    assert "kernels on sm_100 (compute capability 10.0, 232448 bytes" in b200.stdout
    row = next(line for line in b200.stdout.splitlines() if line.startswith("128 "))
    assert row.split()[1:5] == ["fwd_bf16_d128_full_m128n64w4", "67584", "bwd_bf16_d128_full_m64n64w8s2k4q4u2", "119808"]
    h200 = cuflash("info", "--arch", "sm_90a", CUFLASH_DISABLE_SM90="0").stdout
    assert "bwd90_bf16_d128_full_s2" in h200
    rtx = cuflash("info", "--arch", "sm_86").stdout
    row = next(line for line in rtx.splitlines() if line.startswith("192 "))
    assert "none (shared memory)" in row  # no portable 16-bit backward above d160 within 99 KB
    bad = cuflash("info", "--arch", "sm_xx")
    assert bad.returncode == 2 and "sm_xx" in bad.stderr


def test_info_counts_cached_kernels(toy_kernels, toy_spec):
    from cuflash.compile import cache

    cache.compile_to_cache(toy_spec, "sm_80")
    out = cuflash("info", CUFLASH_CACHE_DIR=str(toy_kernels.cache))
    assert "(1 kernels, 2 files" in out.stdout, out.stdout


def _gpu_count() -> int:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount()
    except Exception:
        return 0


def test_compile_only_fills_the_cache(toy_kernels):
    variables = dict(CUFLASH_KERNELS_DIR=str(toy_kernels.root), CUFLASH_CACHE_DIR=str(toy_kernels.cache))
    out = cuflash("compile", "--only", "fwd_fp16_d64_full", "--only", "fwd_bf16_d64_full", "--arch", "sm_80,sm_90a", "-j", "2", **variables)
    assert out.returncode == 0, out.stderr
    names = ["fwd_fp16_d64_full_m", "fwd_bf16_d64_full_m"]
    table = out.stdout.splitlines()
    assert table[0].split()[:3] == ["spec", "arch", "regs"]
    rows = [line.split() for line in table[2:]]
    assert len(rows) == 4
    assert {(r[0][: len(names[0])], r[1], r[-1]) for r in rows} == {
        (n, a, "ok") for n in names for a in ("sm_80", "sm_90")
    }
    assert all(int(r[2]) > 0 for r in rows)  # registers
    from cuflash import launch, support, specs

    dynamic = launch.fwd_smem_bytes(specs.FwdSpec("fp16", 64, specs.PLAIN, support.FWD_TILES[64]))
    assert all(int(r[4]) >= dynamic > 0 for r in rows)  # shared memory counts the dynamic bytes
    assert "[4/4]" in out.stderr and "4/4 ok" in out.stderr
    assert len(out.stderr.splitlines()) < 10  # piped: a progress line per tenth, not per kernel
    assert len(list(toy_kernels.cache.glob("*.cubin"))) == 4

    again = cuflash("compile", "--only", "fwd_fp16_d64_full", "--only", "fwd_bf16_d64_full", "--arch", "sm_80,sm_90a", **variables)
    assert again.returncode == 0, again.stderr
    assert [line.split()[-1] for line in again.stdout.splitlines()[2:]] == ["cached"] * 4


def test_compile_error_fails_with_the_log(toy_kernels):
    toy_kernels.write(header=toy_kernels.HEADER + "not C++\n")
    out = cuflash("compile", "--only", "fwd_bf16_d64_full", "--arch", "sm_80",
                  CUFLASH_KERNELS_DIR=str(toy_kernels.root), CUFLASH_CACHE_DIR=str(toy_kernels.cache))
    assert out.returncode == 1
    assert "ERROR" in out.stdout
    assert "common/toy.cuh(4)" in out.stderr and "0/1 ok" in out.stderr


def test_compile_fails_on_forbidden_spills(toy_kernels):
    toy_kernels.write(fwd=toy_kernels.SPILLING_FWD)
    out = cuflash("compile", "--only", "fwd_bf16_d64_full", "--arch", "sm_80",
                  CUFLASH_KERNELS_DIR=str(toy_kernels.root), CUFLASH_CACHE_DIR=str(toy_kernels.cache))
    assert out.returncode == 1
    assert "SPILLS" in out.stdout and "allow_spills=False" in out.stderr


def test_compile_rejects_bad_arguments(tmp_path):
    out = cuflash("compile", "--only", "no-such-spec", CUFLASH_CACHE_DIR=str(tmp_path))
    assert out.returncode == 2 and "no spec name contains 'no-such-spec'" in out.stderr
    out = cuflash("compile", "--arch", "ampere", CUFLASH_CACHE_DIR=str(tmp_path))
    assert out.returncode == 2 and "bad arch 'ampere'" in out.stderr


def test_compile_list():
    from cuflash import support
    from cuflash.compile import cache

    out = cuflash("compile", "--list")
    assert out.returncode == 0
    # without a GPU, the specs for sm_80 and sm_90a; sm_100's own tiles with --arch sm_100
    declared = support.declared_specs()
    assert out.stdout.split() == [s.name for s in declared if any(cache.builds_for(s, a) for a in support.COMPILE_ARCHS)]
    b200 = cuflash("compile", "--list", "--arch", "sm_100").stdout.split()
    assert b200 == [s.name for s in declared if cache.builds_for(s, "sm_100")]
    assert "bwd_bf16_d96_full_m64n128w8s4k4q4u2" in b200 and "bwd_bf16_d96_full_m64n128w8s4k4q4u0" not in b200


def test_compile_dtypes():
    from cuflash import support

    from cuflash.compile import cache

    out = cuflash("compile", "--list", "--dtypes", "fp32")
    names = out.stdout.split()
    # without a GPU, the specs for sm_80 and sm_90a (not those of sm_100's own lists)
    declared = support.declared_specs(dtypes=("fp32",))
    assert out.returncode == 0 and names == [s.name for s in declared
                                             if any(cache.builds_for(s, a) for a in support.COMPILE_ARCHS)]
    b200 = cuflash("compile", "--list", "--dtypes", "fp32", "--arch", "sm_100").stdout.split()
    assert "bwd_fp32_d96_full_m16n32w2s2k2q1u1" in b200 and "bwd_fp32_d96_full_m16n32w2s2k2q1u1" not in names
    assert names and all("_fp32" in n for n in names) and not any(n.startswith(("fwd90", "bwd90", "decode")) for n in names)
    out = cuflash("compile", "--list", "--dtypes", "fp64")
    assert out.returncode == 2 and "--dtypes: expected a comma list of fp16, bf16, fp32" in out.stderr


def test_bench_is_dispatched_or_explained():
    out = cuflash("bench", "--help")
    if importlib.util.find_spec("cuflash.bench") is None or importlib.util.find_spec("cuflash.bench.cli") is None:
        assert out.returncode != 0 and "cuflash bench is not available" in out.stderr
    else:
        assert out.returncode == 0, out.stderr
        assert "usage: cuflash bench" in out.stdout


def test_compile_without_nvrtc_says_so_once(monkeypatch, capsys):
    """A machine without CuPy/NVRTC gets one line, not one error per kernel (issue: first contact)."""
    from cuflash import cli
    from cuflash.compile import nvrtc

    def missing():
        raise nvrtc.CompileError("CuPy is not installed (No module named 'cupy'): pip install 'cuflash[cuda12]'")

    monkeypatch.setattr(nvrtc, "nvrtc_version", missing)
    assert cli.main(["compile", "--only", "bf16_d128", "--arch", "sm_80"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["cuflash compile: CuPy is not installed (No module named 'cupy'): pip install 'cuflash[cuda12]'"]
