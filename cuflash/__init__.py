"""cuflash: exact attention (FlashAttention-2) as CUDA C++ compiled at run time by NVRTC through CuPy."""
from .api import (
    attention,
    attention_backward,
    attention_kvpacked,
    attention_kvpacked_backward,
    attention_qkvpacked,
    attention_qkvpacked_backward,
    attention_varlen,
    attention_varlen_backward,
    attention_with_kvcache,
    merge_attention_states,
)

__version__ = "0.1.0"

__all__ = [
    "attention",
    "attention_backward",
    "attention_qkvpacked",
    "attention_qkvpacked_backward",
    "attention_kvpacked",
    "attention_kvpacked_backward",
    "attention_varlen",
    "attention_varlen_backward",
    "attention_with_kvcache",
    "merge_attention_states",
    "__version__",
]
