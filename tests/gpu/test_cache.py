"""The kernel cache on a GPU: compile once, then memory hits; a second process loads from disk."""
from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Loads one kernel, launches it when it is the toy kernel, prints the cache counters as JSON.
SCRIPT = """
import json, sys
import cupy
from cuflash.compile import cache
from cuflash.specs import Features, FwdSpec

dtype, head_dim, causal, toy = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4] == "1"
fn = cache.get_function(FwdSpec.for_problem(dtype, head_dim, Features("causal" if causal else "none")))
values = None
if toy:
    out = cupy.zeros(100, dtype=cupy.float32)
    fn((1,), (128,), (out, cupy.int32(out.size)))
    values = out.get().tolist()
print(json.dumps({"stats": cache.stats(), "values": values}))
"""


def run_process(*args: str, **variables: str) -> tuple[dict, str]:
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("CUFLASH_")}
    run_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    run_env.update(variables)
    out = subprocess.run([sys.executable, "-c", SCRIPT, *args], env=run_env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


def test_second_process_loads_the_toy_kernel_from_disk(toy_kernels):
    variables = dict(CUFLASH_KERNELS_DIR=str(toy_kernels.root), CUFLASH_CACHE_DIR=str(toy_kernels.cache))
    first, log = run_process("bf16", "64", "0", "1", CUFLASH_LOG_LEVEL="INFO", **variables)
    assert first["stats"]["compiles"] == 1 and first["stats"]["disk_hits"] == 0
    assert first["values"] == [2.0 * (i + 64) for i in range(100)]  # TOY_SCALE * (i + CUFLASH_HEAD_DIM)
    assert re.search(r"INFO: compiled fwd_bf16_d64_full_\S+ for sm_\d+ in \d+\.\d\d s", log), log
    assert len(list(toy_kernels.cache.glob("fwd_bf16_d64_full_*.cubin"))) == 1

    second, log = run_process("bf16", "64", "0", "1", CUFLASH_LOG_LEVEL="DEBUG", **variables)
    assert second["stats"]["compiles"] == 0 and second["stats"]["disk_hits"] == 1
    assert second["values"] == first["values"]
    assert "compiled" not in log and "DEBUG: loaded fwd_bf16_d64_full_" in log


def test_header_change_recompiles_in_a_new_process(toy_kernels):
    variables = dict(CUFLASH_KERNELS_DIR=str(toy_kernels.root), CUFLASH_CACHE_DIR=str(toy_kernels.cache))
    run_process("bf16", "64", "0", "1", **variables)
    toy_kernels.write(values=toy_kernels.VALUES.replace("2.0f", "3.0f"))
    result, _ = run_process("bf16", "64", "0", "1", **variables)
    assert result["stats"]["compiles"] == 1
    assert result["values"] == [3.0 * (i + 64) for i in range(100)]


def test_disabled_disk_cache_compiles_every_time(toy_kernels):
    variables = dict(CUFLASH_KERNELS_DIR=str(toy_kernels.root), CUFLASH_CACHE_DIR=str(toy_kernels.cache),
                     CUFLASH_DISABLE_DISK_CACHE="1")
    for _ in range(2):
        result, _ = run_process("bf16", "64", "0", "1", **variables)
        assert result["stats"]["compiles"] == 1 and result["stats"]["disk_hits"] == 0
        assert result["values"][:2] == [128.0, 130.0]
    assert not toy_kernels.cache.exists() or not any(toy_kernels.cache.iterdir())


def test_second_process_loads_the_real_kernel_from_disk(tmp_path):
    variables = dict(CUFLASH_CACHE_DIR=str(tmp_path / "cache"), CUFLASH_LOG_LEVEL="INFO")
    first, log = run_process("bf16", "128", "1", "0", **variables)
    assert first["stats"]["compiles"] == 1, log
    assert "compiled fwd_bf16_d128_causal_" in log
    second, log = run_process("bf16", "128", "1", "0", **variables)
    assert second["stats"] == {"compiles": 0, "disk_hits": 1, "memory_hits": 0}, log


@pytest.fixture
def empty_memory_cache():
    """No loaded kernels before the test, and none after: the toy kernel must not
    stay in the table under a real spec's key for the tests that follow."""
    from cuflash.compile import cache

    cache.clear_memory_cache()
    yield
    cache.clear_memory_cache()


def test_memory_cache_returns_the_same_kernel(toy_kernels, toy_spec, empty_memory_cache, caplog, monkeypatch):
    import cupy

    from cuflash.compile import cache

    monkeypatch.setattr(logging.getLogger("cuflash"), "propagate", True)  # to caplog, even with CUFLASH_LOG_LEVEL set
    with caplog.at_level("INFO", logger="cuflash"):
        fn = cache.get_function(toy_spec)
    assert cache.stats() == {"compiles": 1, "disk_hits": 0, "memory_hits": 0}
    assert any(r.levelname == "INFO" and r.getMessage().startswith(f"compiled {toy_spec.name} for sm_")
               for r in caplog.records)
    device = cupy.cuda.runtime.getDevice()
    for _ in range(3):
        assert cache.get_function(toy_spec) is fn
        assert cache.get_function(toy_spec, device) is fn
    assert cache.stats() == {"compiles": 1, "disk_hits": 0, "memory_hits": 6}
    cache.clear_memory_cache()
    assert cache.get_function(toy_spec) is not fn
    assert cache.stats() == {"compiles": 0, "disk_hits": 1, "memory_hits": 0}


@pytest.mark.parametrize("bad", [b"", b"not a cubin"])
def test_a_corrupt_cache_file_is_compiled_again(toy_kernels, bad):
    variables = dict(CUFLASH_KERNELS_DIR=str(toy_kernels.root), CUFLASH_CACHE_DIR=str(toy_kernels.cache))
    run_process("bf16", "64", "0", "1", **variables)
    (path,) = toy_kernels.cache.glob("*.cubin")
    path.write_bytes(bad)
    result, log = run_process("bf16", "64", "0", "1", **variables)
    assert result["stats"]["compiles"] == 1, log
    assert result["values"][:2] == [128.0, 130.0]
    assert path.read_bytes()[:4] == b"\x7fELF"
