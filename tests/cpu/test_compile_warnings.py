"""What a first-use compile says about a kernel that will run slowly (cuflash/compile/cache.py _compile):
register spills where the spec forbids them, and wgmma products that ptxas serialised, with the NVRTC
upgrade that avoids it. NVRTC itself is replaced by a stub returning a chosen log: no compiler runs."""
import logging

import pytest

from cuflash import support
from cuflash.compile import cache, nvrtc
from cuflash.specs import Features

# NVRTC 12.8's words for fwd90_bf16_d64_full_m192n128s2
SERIALIZED_LOG = ("ptxas info    : (C7515) Potential Performance Loss: wgmma.mma_async instructions are serialized "
                  "due to non wgmma instructions defining accumulator registers of a wgmma between start and end of "
                  "the pipeline stage in the function 'cuflash_fwd_sm90'")


def result(log, spills=0):
    return nvrtc.CompileResult(name="k", arch="sm_90a", cubin=b"", log=log, registers=128, spill_stores=spills,
                               spill_loads=spills, shared_bytes=0, stack_frame=0, seconds=0.0)


@pytest.fixture
def hopper_spec():
    return support.fwd_spec("bf16", 64, Features(), (9, 0), seqlen_q=512)


def compile_with(monkeypatch, spec, log, version, spills=0):
    monkeypatch.setattr(nvrtc, "compile_cubin", lambda *a, **k: result(log, spills))
    monkeypatch.setattr(nvrtc, "nvrtc_version", lambda: version)
    return cache._compile(cache.Prepared(spec, "sm_90a", "// stub", (), "0" * 64))


@pytest.mark.parametrize("version", [(12, 4), (12, 8)])
def test_serialized_wgmma_under_old_nvrtc_says_what_to_install(monkeypatch, caplog, hopper_spec, version):
    with caplog.at_level(logging.WARNING, logger="cuflash.compile"):
        compile_with(monkeypatch, hopper_spec, SERIALIZED_LOG, version)
    text = caplog.text
    assert hopper_spec.name in text and "serialised its wgmma products" in text
    assert "NVRTC %d.%d" % version in text and "nvidia-cuda-nvrtc-cu12>=12.9" in text


@pytest.mark.parametrize("version", [(12, 9), (13, 0), (13, 5)])
def test_serialized_wgmma_under_current_nvrtc_is_reported_without_upgrade(monkeypatch, caplog, hopper_spec, version):
    with caplog.at_level(logging.WARNING, logger="cuflash.compile"):
        compile_with(monkeypatch, hopper_spec, SERIALIZED_LOG, version)
    assert "serialised its wgmma products" in caplog.text
    assert "pip install" not in caplog.text


def test_a_clean_compile_says_nothing(monkeypatch, caplog, hopper_spec):
    with caplog.at_level(logging.WARNING, logger="cuflash.compile"):
        compile_with(monkeypatch, hopper_spec, "ptxas info    : Used 128 registers", (12, 8))
    assert caplog.text == ""


def test_spills_still_reported(monkeypatch, caplog, hopper_spec):
    with caplog.at_level(logging.WARNING, logger="cuflash.compile"):
        compile_with(monkeypatch, hopper_spec, "ptxas info    : Used 128 registers", (13, 0), spills=40)
    assert "spills registers (40 bytes stored, 40 loaded)" in caplog.text


def test_the_cuda12_extra_asks_for_that_nvrtc():
    import pathlib
    import re

    text = (pathlib.Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    floor = re.search(r'"nvidia-cuda-nvrtc-cu12>=(\d+)\.(\d+)', text)
    assert floor is not None and (int(floor.group(1)), int(floor.group(2))) >= cache.NVRTC_FOR_WGMMA


def test_info_names_an_old_nvrtc():
    from cuflash import cli

    assert cli._nvrtc_summary((13, 0)) == "13.0"
    assert cli._nvrtc_summary((12, 9)) == "12.9"
    old = cli._nvrtc_summary((12, 8))
    assert old.startswith("12.8 (older than 12.9") and "nvidia-cuda-nvrtc-cu12>=12.9" in old
