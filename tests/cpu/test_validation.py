"""Argument checks that need no GPU: host arrays and unsupported options are refused up front."""
import numpy as np
import pytest

import cuflash


def test_numpy_input_is_refused_with_a_hint():
    q = np.ones((1, 4, 2, 64), np.float16)
    with pytest.raises(TypeError, match=r"q is a NumPy array.*cupy.asarray\(q\)"):
        cuflash.attention(q, q, q)


def test_other_objects_are_refused():
    with pytest.raises(TypeError, match="q must be a CuPy array"):
        cuflash.attention([[1.0]], None, None)


def test_packed_host_arrays_are_refused_with_a_hint():
    qkv = np.ones((1, 4, 3, 2, 64), np.float16)
    with pytest.raises(TypeError, match=r"qkv is a NumPy array.*cupy.asarray\(qkv\)"):
        cuflash.attention_qkvpacked(qkv)
    with pytest.raises(TypeError, match=r"kv is a NumPy array"):
        cuflash.attention_kvpacked(qkv[:, :, 0], qkv[:, :, :2])
