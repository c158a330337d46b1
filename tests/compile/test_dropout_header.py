"""kernels_cu/common/dropout.cuh compiles with NVRTC for sm_80 and sm_90a (no GPU needed): a probe
kernel that writes every entry's keep bit, the one tests/gpu/test_dropout_mask.py runs."""
from __future__ import annotations

from pathlib import Path

import pytest

from cuflash.compile import env

#: The probe kernel: every entry's keep bit, one thread per group (tests/dropout_probe.cu).
PROBE = (Path(__file__).resolve().parents[1] / "dropout_probe.cu").read_text()


def compile_probe(arch: str) -> str:
    from cupy.cuda import nvrtc

    headers = {name: (env.kernels_dir() / "common" / name).read_text() for name in ("dropout.cuh", "platform.cuh")}
    program = nvrtc.createProgram(PROBE, "probe.cu", [h.encode() for h in headers.values()],
                                  [n.encode() for n in headers])
    try:
        nvrtc.compileProgram(program, [f"--gpu-architecture={arch.replace('sm_', 'compute_')}", "-std=c++17"])
        ptx = nvrtc.getPTX(program)
        return ptx.decode() if isinstance(ptx, bytes) else ptx
    finally:
        nvrtc.destroyProgram(program)


@pytest.mark.parametrize("arch", ["sm_80", "sm_90a"])
def test_dropout_header_compiles(arch):
    ptx = compile_probe(arch)
    assert ".entry probe" in ptx and "mul.hi.u32" in ptx
