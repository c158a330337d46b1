"""The disk cache survives damage and concurrency, without a GPU (toy kernels, real NVRTC):
a truncated, overwritten or orphaned cubin is detected before any load and compiled again;
processes compiling the same kernel at once all succeed and leave one intact entry; an
unwritable cache folder falls back to compiling with one warning."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cuflash.compile import cache

REPO = Path(__file__).resolve().parents[2]


def entry(toy_spec):
    prepared = cache.prepare(toy_spec, "sm_80")
    return prepared, prepared.path, prepared.meta_path


@pytest.mark.parametrize("damage", ["truncate", "overwrite", "empty", "no_meta", "bad_meta"])
def test_a_damaged_entry_is_never_trusted(toy_kernels, toy_spec, damage, caplog):
    first = cache.compile_to_cache(toy_spec, "sm_80")
    prepared, cubin, meta = entry(toy_spec)
    good = cubin.read_bytes()
    assert not first.cached and good[:4] == b"\x7fELF"
    assert cache._stored_meta(prepared) is not None
    if damage == "truncate":
        cubin.write_bytes(good[: len(good) // 2])
    elif damage == "overwrite":
        cubin.write_bytes(bytes(len(good)))
    elif damage == "empty":
        cubin.write_bytes(b"")
    elif damage == "no_meta":
        meta.unlink()
    else:
        meta.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="cuflash.compile"):
        assert cache._stored_meta(prepared) is None  # what get_function checks before loading
    assert "damaged" in caplog.text or damage == "no_meta"
    again = cache.compile_to_cache(toy_spec, "sm_80")
    assert not again.cached  # compiled again, not read back
    assert cubin.read_bytes() == good and cache._stored_meta(prepared) is not None
    assert cache.compile_to_cache(toy_spec, "sm_80").cached  # and now trusted


def test_the_meta_records_the_digest(toy_kernels, toy_spec):
    cache.compile_to_cache(toy_spec, "sm_80")
    _, cubin, meta = entry(toy_spec)
    import hashlib

    assert json.loads(meta.read_text())["cubin_sha256"] == hashlib.sha256(cubin.read_bytes()).hexdigest()


def test_concurrent_processes_leave_one_intact_entry(toy_kernels, toy_spec):
    code = (
        "import sys; from cuflash.compile import cache; from cuflash.specs import FwdSpec; "
        "r = cache.compile_to_cache(FwdSpec.for_problem('bf16', 64), 'sm_80', force=True); print(len(r.cubin))"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), results
    assert sorted(p.name for p in toy_kernels.cache.iterdir()) == sorted(
        [entry(toy_spec)[1].name, entry(toy_spec)[2].name])  # no temporary files left
    assert cache._stored_meta(entry(toy_spec)[0]) is not None


def test_an_unwritable_cache_falls_back_with_one_warning(toy_kernels, toy_spec, caplog, monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("CUFLASH_CACHE_DIR", str(blocker / "cache"))  # no folder can be made there, even by root
    with caplog.at_level(logging.WARNING, logger="cuflash.compile"):
        result = cache.compile_to_cache(toy_spec, "sm_80")
    assert result.cubin[:4] == b"\x7fELF" and not result.cached
    assert caplog.text.count("cannot write the kernel cache") == 1
