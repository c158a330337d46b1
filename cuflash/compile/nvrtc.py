"""Driver-free compilation: CUDA source -> cubin through NVRTC, no GPU needed.

CuPy's high-level compile path asks the GPU for its arch; this module calls
``cupy.cuda.nvrtc`` directly with an explicit ``--gpu-architecture``, so
``cuflash compile`` and the compile tests run on machines without a GPU. The
runtime path (cache.py) uses the same function, so a kernel is built the same
way everywhere.
"""
from __future__ import annotations

import functools
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import env

#: Options that define the binary. Include folders are added separately by
#: compile_cubin and are not part of the cache key (they are paths, which
#: differ between machines, not code).
BASE_OPTIONS = ("-std=c++17", "--ptxas-options=-v")


class CompileError(Exception):
    """NVRTC rejected a kernel; the message holds the full compiler log."""

    def __init__(self, message: str, log: str = ""):
        super().__init__(message)
        self.log = log


@dataclass(frozen=True)
class CompileResult:
    name: str
    arch: str
    cubin: bytes = field(repr=False)
    log: str = field(repr=False)
    registers: int
    spill_stores: int  # bytes
    spill_loads: int  # bytes
    shared_bytes: int  # static shared memory (dynamic shared memory is set at launch)
    stack_frame: int  # bytes
    seconds: float
    cached: bool = False  # True when read back from the disk cache instead of compiled

    @property
    def spills(self) -> bool:
        return self.spill_stores > 0 or self.spill_loads > 0

    @property
    def wgmma_serialized(self) -> bool:
        """ptxas made every wgmma of the kernel wait for the one before (its info C7514 / C7515:
        an accumulator read or written by other instructions while a product may still be in
        flight, e.g. a product issued under a run-time condition). bench/NOTES.md b5."""
        return "wgmma.mma_async instructions are serialized" in self.log

    @property
    def reported(self) -> bool:
        """False when NVRTC's log carried no ptxas report (figures are -1)."""
        return self.registers >= 0

    def without_cubin(self) -> "CompileResult":
        return replace(self, cubin=b"")


@functools.lru_cache(maxsize=None)
def _nvrtc():
    """CuPy's NVRTC bindings, checked to find the NVRTC library."""
    try:
        from cupy.cuda import nvrtc

        nvrtc.getVersion()
    except ImportError as exc:
        raise CompileError(
            f"CuPy is not installed ({exc}): pip install 'cuflash[cuda12]' (or cuda13; -e '.[cuda12]' in a checkout)"
        ) from exc
    except (RuntimeError, OSError) as exc:
        raise CompileError(
            f"NVRTC cannot be loaded ({exc}): pip install nvidia-cuda-nvrtc-cu12 (part of the cuda12 extra; "
            "nvidia-cuda-nvrtc for CUDA 13) or install a CUDA toolkit"
        ) from exc
    return nvrtc


def nvrtc_version() -> tuple[int, int]:
    return tuple(_nvrtc().getVersion())


@functools.lru_cache(maxsize=None)
def _supported_archs() -> tuple[int, ...]:
    nvrtc = _nvrtc()
    try:
        return tuple(nvrtc.getSupportedArchs())
    except Exception:  # very old NVRTC: let the compile itself report it
        return ()


def compile_options(arch: str, extra_options=()) -> tuple[str, ...]:
    """The options that determine the cubin (part of the cache key)."""
    return (f"--gpu-architecture={arch}", *BASE_OPTIONS, *extra_options, *env.nvrtc_extra_options())


@functools.lru_cache(maxsize=None)
def include_dirs() -> tuple[str, ...]:
    """Folders holding the CUDA toolkit headers (cuda_fp16.h, cuda_bf16.h, ...)
    for angle-bracket includes: the pip package nvidia-cuda-runtime-cu12 (or
    the CUDA 13 layout), then $CUDA_PATH / $CUDA_HOME / /usr/local/cuda."""
    found = []
    try:
        import nvidia

        for base in nvidia.__path__:
            for sub in ("cuda_runtime/include", "cu13/include"):
                found.append(Path(base) / sub)
    except ImportError:
        pass
    found.extend(root / "include" for root in env.cuda_toolkit_roots())
    return tuple(dict.fromkeys(str(p) for p in found if (p / "cuda_fp16.h").is_file()))


def _check_arch(arch: str, name: str) -> None:
    match = re.fullmatch(r"(?:sm|compute)_(\d+)[af]?", arch)
    if match is None:
        raise CompileError(f"{name}: bad arch {arch!r}; write it like sm_80, sm_90 or sm_90a")
    supported = _supported_archs()
    if supported and int(match.group(1)) not in supported:
        major, minor = nvrtc_version()
        raise CompileError(
            f"{name}: NVRTC {major}.{minor} cannot compile for {arch} (it supports "
            f"{', '.join(f'sm_{a}' for a in supported)}); install a newer nvidia-cuda-nvrtc / CUDA toolkit"
        )


def compile_cubin(source: str, name: str, arch: str, extra_options=(), entry: str | None = None) -> CompileResult:
    """Compile ``source`` (one rendered kernel file) to a cubin for ``arch``.

    ``name`` names the kernel in messages and is the program name NVRTC shows.
    Registers, spills, static shared memory and stack frame come from the ptxas
    report of the ``extern "C"`` kernel ``entry`` (CompileError if the module
    has no such kernel); with ``entry=None``, of all kernels together (most
    registers and shared memory, summed spills).
    Raises CompileError with the full NVRTC log when NVRTC fails.
    """
    nvrtc = _nvrtc()
    _check_arch(arch, name)
    options = [*compile_options(arch, extra_options), *(f"-I{d}" for d in include_dirs())]
    program = nvrtc.createProgram(source, f"{name}.cu", [], [])
    try:
        start = time.perf_counter()
        try:
            nvrtc.compileProgram(program, options)
            failed = None
        except nvrtc.NVRTCError as exc:
            failed = exc
        seconds = time.perf_counter() - start
        log = nvrtc.getProgramLog(program).strip("\x00 \n")
        if failed is not None:
            raise CompileError(
                f"NVRTC could not compile {name} for {arch} ({failed}). File names below are relative to "
                f"{_kernels_dir_for_message()}.\nOptions: {' '.join(options)}\n{log}",
                log,
            )
        cubin = nvrtc.getCUBIN(program)
    finally:
        nvrtc.destroyProgram(program)
    try:
        stats = parse_ptxas(log, entry)
    except CompileError as exc:
        # Seen with NVRTC 13.0 on an H200: for some kernels the log holds no
        # ptxas report at all. The cubin's symbol table still tells whether
        # the entry exists; the resource figures are then unknown (-1).
        if entry is None or entry.encode() not in cubin:
            raise CompileError(f"{name} for {arch}: {exc}", log) from None
        stats = dict(registers=-1, spill_stores=-1, spill_loads=-1, shared_bytes=-1, stack_frame=-1)
    return CompileResult(name=name, arch=arch, cubin=cubin, log=log, seconds=seconds, **stats)


def compile_ptx(source: str, name: str, arch: str, headers: dict | None = None) -> str:
    """The PTX of ``source`` for ``arch`` (virtual: compute_XX), with ``headers`` {include name:
    text} given in memory; no cache and no ptxas. The tests read struct layouts and probe kernels
    from it (tests/compile)."""
    nvrtc = _nvrtc()
    headers = headers or {}
    program = nvrtc.createProgram(source, f"{name}.cu", [t.encode() for t in headers.values()],
                                  [n.encode() for n in headers])
    try:
        nvrtc.compileProgram(program, [f"--gpu-architecture={arch.replace('sm_', 'compute_')}", "-std=c++17"])
        ptx = nvrtc.getPTX(program)
        return ptx.decode() if isinstance(ptx, bytes) else ptx
    finally:
        nvrtc.destroyProgram(program)


def _placeholder_stats() -> dict:
    return dict(registers=0, spill_stores=0, spill_loads=0, shared_bytes=0, stack_frame=0)


def _kernels_dir_for_message() -> str:
    try:
        return str(env.kernels_dir())
    except FileNotFoundError:
        return "the kernels folder"


_ENTRY = re.compile(r"Compiling entry function '([^']+)' for")
_PROPERTIES = re.compile(r"Function properties for (\S+)")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


def parse_ptxas(log: str, entry: str | None) -> dict:
    """Registers, spills (bytes), static shared memory and stack frame of the
    kernel ``entry`` from a ptxas -v report (``None``: all kernels together).

    ptxas lists non-inlined device functions in blocks of their own, without
    saying which kernel calls them; their spills and stack frames are counted
    for every kernel (a spill anywhere in the module is a spill). Raises
    CompileError when the report has no kernel ``entry``.
    """
    entries: dict[str, dict] = {}
    frames: dict[str, tuple[int, int, int]] = {}
    current_entry = None  # kernel whose "Used N registers" line comes next
    current_function = None  # function whose stack/spill line comes next
    for line in log.splitlines():
        if match := _ENTRY.search(line):
            current_entry = match.group(1)
            entries[current_entry] = {"registers": 0, "shared_bytes": 0}
        elif match := _PROPERTIES.search(line):
            current_function = match.group(1)
        elif (match := _FRAME.search(line)) and current_function is not None:
            frames[current_function] = tuple(int(g) for g in match.groups())
            current_function = None
        elif (match := _USED.search(line)) and current_entry is not None:
            entries[current_entry]["registers"] = int(match.group(1))
            smem = _SMEM.search(line)
            entries[current_entry]["shared_bytes"] = int(smem.group(1)) if smem else 0
            current_entry = None
    if entry is not None and entry not in entries:
        found = ", ".join(sorted(entries)) or "none"
        raise CompileError(
            f"the compiled module has no kernel {entry!r} (found: {found}); "
            f'declare it as extern "C" __global__ void {entry}(...)',
            log,
        )
    kernels = [entry] if entry is not None else list(entries)
    counted = kernels + [f for f in frames if f not in entries]
    stats = _placeholder_stats()
    for kernel in kernels:
        stats["registers"] = max(stats["registers"], entries[kernel]["registers"])
        stats["shared_bytes"] = max(stats["shared_bytes"], entries[kernel]["shared_bytes"])
    for function in counted:
        frame, stores, loads = frames.get(function, (0, 0, 0))
        stats["stack_frame"] += frame
        stats["spill_stores"] += stores
        stats["spill_loads"] += loads
    return stats
