"""cuflash.compile.source.render: headers inlined once, defines first, #line markers, stable hash."""
from __future__ import annotations

import hashlib
import shutil

import pytest

from cuflash.compile.source import SourceError, render


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_headers_are_inlined_once(toy_kernels, toy_spec):
    text = render(toy_spec)
    assert '#include "' not in text
    assert "__device__ inline float toy_value" in text  # common/toy.cuh
    assert text.count("#define TOY_SCALE 2.0f") == 1  # common/values.cuh, included from toy.cuh
    assert text.count("toy_value(int i)") == 1  # toy.cuh is included twice by fwd.cu
    assert "#pragma once" not in text  # would warn in the single rendered file


def test_defines_come_first_in_spec_order(toy_kernels, toy_spec):
    lines = render(toy_spec).splitlines()
    assert toy_spec.name in lines[0]
    defines = [f"#define {k} {v}" for k, v in toy_spec.defines().items()]
    assert lines[1 : 1 + len(defines)] == defines
    assert lines[1 + len(defines)] == '#line 1 "fwd.cu"'


def test_line_directives_point_at_the_real_files(toy_kernels, toy_spec):
    lines = render(toy_spec).splitlines()
    # fwd.cu line 2 includes common/toy.cuh, which includes values.cuh (a sibling) on its line 2.
    header = lines.index('#line 1 "common/toy.cuh"')
    assert lines[header + 2] == '#line 1 "common/values.cuh"'
    assert '#line 3 "common/toy.cuh"' in lines  # back in toy.cuh after values.cuh
    assert '#line 3 "fwd.cu"' in lines  # back in fwd.cu after its line 2
    # The kernel's line number as counted from the last marker is its line in fwd.cu.
    last = max(i for i, line in enumerate(lines) if line.startswith("#line") and '"fwd.cu"' in line)
    kernel = next(i for i, line in enumerate(lines) if line.startswith('extern "C"'))
    source = (toy_kernels.root / "fwd.cu").read_text().splitlines()
    expected = 1 + next(i for i, line in enumerate(source) if line.startswith('extern "C"'))
    assert int(lines[last].split()[1]) + (kernel - last - 1) == expected


def test_render_is_deterministic_and_path_independent(toy_kernels, toy_spec, tmp_path):
    first = render(toy_spec)
    assert render(toy_spec) == first
    copy = tmp_path / "elsewhere" / "kernels"
    shutil.copytree(toy_kernels.root, copy)
    assert render(toy_spec, copy) == first  # no absolute paths in the text, so one cache key everywhere


def test_hash_changes_when_an_included_header_changes(toy_kernels, toy_spec):
    before = sha(render(toy_spec))
    toy_kernels.write(values=toy_kernels.VALUES.replace("2.0f", "3.0f"))  # nested header: fwd.cu -> toy.cuh -> values.cuh
    after = sha(render(toy_spec))
    assert after != before
    toy_kernels.write()
    assert sha(render(toy_spec)) == before


def test_hash_changes_with_the_spec(toy_kernels):
    from cuflash.specs import Features, FwdSpec

    a = render(FwdSpec.for_problem("bf16", 64, Features()))
    b = render(FwdSpec.for_problem("bf16", 64, Features("causal")))
    assert sha(a) != sha(b)


def test_missing_header_is_named_with_its_includer(toy_kernels, toy_spec):
    toy_kernels.write(header=toy_kernels.HEADER.replace('"values.cuh"', '"missing_values.cuh"'))
    with pytest.raises(SourceError, match=r'common/toy\.cuh:2: #include "missing_values\.cuh" not found'):
        render(toy_spec)


def test_missing_kernel_file_is_named(toy_kernels, toy_spec):
    (toy_kernels.root / "fwd.cu").unlink()
    with pytest.raises(SourceError, match=r"'fwd\.cu' of fwd_bf16_d64"):
        render(toy_spec)


def test_angle_bracket_includes_are_left_to_nvrtc(toy_kernels, toy_spec):
    toy_kernels.write(fwd="#include <cuda_fp16.h>\n" + toy_kernels.FWD)
    assert "#include <cuda_fp16.h>" in render(toy_spec)


def test_include_cycle_terminates(toy_kernels, toy_spec):
    toy_kernels.write(values='#pragma once\n#include "toy.cuh"\n#define TOY_SCALE 2.0f\n')
    text = render(toy_spec)
    assert text.count("toy_value(int i)") == 1


def test_real_specs_render():
    from cuflash import support
    from cuflash.compile import env

    specs = support.declared_specs()
    assert specs
    texts = {spec.name: render(spec) for spec in specs}
    assert len(set(texts.values())) == len(specs), "two specs render to the same source"
    for text in texts.values():
        assert '#include "' not in text
    assert (env.kernels_dir() / specs[0].source).is_file()
