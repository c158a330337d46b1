"""The params structs agree byte for byte between Python (cuflash/params.py) and CUDA (params.cuh).

NVRTC has no offsetof, so the check reads the PTX instead: one generated
kernel per field loads that field from the struct parameter, and PTX spells
out the byte offset of each load (`ld.param... [name_param_0+OFFSET]`) and the
size of the parameter (`.b8 name_param_0[SIZE]`). No GPU needed.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

from cuflash import params
from cuflash.compile import env, nvrtc


def layout_ptx(struct: str, fields: list[str], arch: str) -> str:
    common = env.kernels_dir() / "common"
    # A tensor map (128 opaque bytes) is read by its first word.
    kernels = [
        f'extern "C" __global__ void get_{f}(const {struct} p, unsigned long long* out) '
        f"{{ *out = (unsigned long long)(p.{f}{'.opaque[0]' if f in params.TENSOR_MAP_FIELDS else ''}); }}"
        for f in fields
    ]
    return nvrtc.compile_ptx('#include "params.cuh"\n' + "\n".join(kernels) + "\n", "layout", arch,
                             {n: (common / n).read_text() for n in ("params.cuh", "platform.cuh")})


def cuda_layout(struct: str, fields: list[str], arch: str) -> tuple[dict[str, int], set[int]]:
    ptx = layout_ptx(struct, fields, arch)
    offsets, sizes = {}, set()
    for f in fields:
        sizes.update(int(s) for s in re.findall(rf"\.b8 get_{f}_param_0\[(\d+)\]", ptx))
        # A scalar load `ld.param.u32 %r1, [p+OFF]`, or (small structs) a vector load
        # `ld.param.v2.u32 {%r1, %r2}, [p+OFF]` of which the kernel uses one register.
        loads = re.findall(
            rf"ld\.param\.(?:v\d\.)?[a-z](\d+)\s+(%\w+|\{{[^}}]*\}}), \[get_{f}_param_0(?:\+(\d+))?\]", ptx
        )
        assert len(loads) == 1, f"expected one load of {struct}.{f} in the PTX, found {loads}"
        bits, regs, base = loads[0]
        offset = int(base or 0)
        if regs.startswith("{"):
            names = [r.strip() for r in regs.strip("{}").split(",")]
            body = ptx.split(f".entry get_{f}(", 1)[1].split("ret;", 1)[0]
            used = [i for i, r in enumerate(names) if re.search(rf"{re.escape(r)}(?!\d)", body.split(regs, 1)[1])]
            assert len(used) == 1, f"cannot tell which lane of {regs} is {struct}.{f}"
            offset += used[0] * int(bits) // 8
        offsets[f] = offset
    return offsets, sizes


def real_fields(dtype: np.dtype) -> list[str]:
    return [f for f in dtype.names if not f.endswith("_")]  # padding members are never read


@pytest.mark.parametrize("struct", sorted(params.STRUCTS))
@pytest.mark.parametrize("arch", ["sm_80", "sm_90a"])
def test_struct_layout_matches(struct, arch):
    dtype = params.STRUCTS[struct]
    offsets, sizes = cuda_layout(struct, real_fields(dtype), arch)
    assert sizes == {dtype.itemsize}, f"sizeof({struct}) in CUDA is {sizes}, NumPy says {dtype.itemsize}"
    for f, off in offsets.items():
        assert off == dtype.fields[f][1], f"{struct}.{f}: CUDA offset {off}, NumPy offset {dtype.fields[f][1]}"


def test_the_check_sees_a_wrong_offset():
    # FwdParams.k sits at byte 8; a dtype that put it elsewhere must be caught.
    offsets, _ = cuda_layout("FwdParams", ["q", "k", "scale_log2"], "sm_80")
    assert offsets["k"] == 8 and offsets["q"] == 0
    assert offsets["scale_log2"] == params.FWD_PARAMS.fields["scale_log2"][1]
