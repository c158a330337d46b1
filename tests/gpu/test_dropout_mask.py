"""kernels_cu/common/dropout.cuh on the GPU against cuflash.reference.dropout_keep_mask, bit for
bit (issue 10's foundation: the kernels and the reference must draw the same mask)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cuflash import reference
from cuflash.compile import env

cp = pytest.importorskip("cupy")
pytestmark = pytest.mark.gpu

#: every entry's keep bit from dropout.cuh, one thread per group of sixteen
PROBE = (Path(__file__).resolve().parents[1] / "dropout_probe.cu").read_text()


@pytest.mark.parametrize("seed, offset, p", [(0, 0, 0.1), (0x1234_5678_9ABC_DEF0, 12345, 0.5), (7, 2**32 - 1, 0.9)])
def test_device_mask_equals_the_reference(seed, offset, p):
    module = cp.RawModule(code=PROBE, options=("-std=c++17", f"-I{env.kernels_dir() / 'common'}"))
    probe = module.get_function("probe")
    batch, nheads, seqlen_q, seqlen_k = 2, 3, 96, 160
    keep = cp.full((batch * nheads, seqlen_q, seqlen_k), 2, dtype=cp.uint8)  # 2: never written
    groups = batch * nheads * (seqlen_q // 4) * (seqlen_k // 4)
    probe(((groups + 255) // 256,), (256,),
          (keep, np.uint64(seed), np.uint32(offset), np.uint32(reference.dropout_threshold(p)),
           np.int32(batch * nheads), np.int32(seqlen_q), np.int32(seqlen_k)))
    want = reference.dropout_keep_mask(seed, offset, batch, nheads, seqlen_q, seqlen_k, p)
    got = cp.asnumpy(keep).reshape(batch, nheads, seqlen_q, seqlen_k)
    assert (got != 2).all(), "the probe left entries unwritten"
    assert np.array_equal(got.astype(bool), want)
