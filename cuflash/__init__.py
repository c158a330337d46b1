"""cuflash: exact attention (FlashAttention-2) as CUDA C++ compiled at run time by NVRTC through CuPy."""
from .api import attention

__version__ = "0.1.0"

__all__ = ["attention", "__version__"]
