"""attention_backward refuses host arrays and unimplemented options before any GPU work."""
import numpy as np
import pytest

import cuflash


def arrays():
    q = np.ones((1, 4, 2, 64), np.float16)
    lse = np.zeros((1, 2, 4), np.float32)
    return q, lse


def test_numpy_input_is_refused_with_a_hint():
    q, lse = arrays()
    with pytest.raises(TypeError, match=r"q is a NumPy array.*cupy.asarray\(q\)"):
        cuflash.attention_backward(q, q, q, q, q, lse)


