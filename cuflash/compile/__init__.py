"""Kernel compilation: render a spec to source, compile it with NVRTC, cache it.

- env.py: every CUFLASH_* variable and the kernels_cu/ path
- source.py: render(spec) -> one source string with all headers inlined
- nvrtc.py: compile_cubin(...) without a GPU, with ptxas statistics
- cache.py: get_function(spec) (memory + disk cache), compile_to_cache, compile_many

Nothing here imports CuPy until a kernel is compiled or loaded.
"""
from . import env
from .cache import clear_memory_cache, compile_many, compile_to_cache, get_function, stats
from .nvrtc import CompileError, CompileResult, compile_cubin, nvrtc_version
from .source import SourceError, render

env.configure_logging()

__all__ = [
    "CompileError",
    "CompileResult",
    "SourceError",
    "clear_memory_cache",
    "compile_cubin",
    "compile_many",
    "compile_to_cache",
    "env",
    "get_function",
    "nvrtc_version",
    "render",
    "stats",
]
