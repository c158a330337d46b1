"""kernels_cu/common/dropout.cuh compiles with NVRTC for sm_80 and sm_90a (no GPU needed): a probe
kernel that writes every entry's keep bit, the one tests/gpu/test_dropout_mask.py runs."""
from __future__ import annotations

from pathlib import Path

import pytest

from cuflash.compile import env, nvrtc

#: The probe kernel: every entry's keep bit, one thread per group (tests/dropout_probe.cu).
PROBE = (Path(__file__).resolve().parents[1] / "dropout_probe.cu").read_text()


@pytest.mark.parametrize("arch", ["sm_80", "sm_90a"])
def test_dropout_header_compiles(arch):
    common = env.kernels_dir() / "common"
    headers = {n: (common / n).read_text() for n in ("dropout.cuh", "platform.cuh")}
    ptx = nvrtc.compile_ptx(PROBE, "probe", arch, headers)
    assert ".entry probe" in ptx and "mul.hi.u32" in ptx
