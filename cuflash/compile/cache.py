"""Compiled kernels: an in-memory cache per (spec, device) over an on-disk cubin cache.

``get_function(spec)`` is the runtime entry: a dict lookup when the kernel is
already loaded; otherwise the cubin is read from the disk cache, or compiled
with NVRTC (nvrtc.py) and written there, then loaded into the device's context.

Disk cache files are named ``<spec name>.<arch>.<key>.cubin`` under
``env.cache_dir()``, where ``key`` is a sha256 of the rendered source (all
headers inlined), the compile options, the arch and the NVRTC version. A
``.json`` file beside each cubin keeps the cubin's sha256 (checked before every
load: a damaged cubin is removed and compiled again) and its ptxas statistics for
``cuflash compile``. Files are written to a temporary name and renamed into
place, so concurrent processes never read a partial file.

``compile_to_cache`` and ``compile_many`` build cubins without a GPU (the
``cuflash compile`` command and tests/compile).
"""
from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator

from . import env, nvrtc, source

logger = logging.getLogger("cuflash.compile")

#: Bump when the cache layout or the meaning of a key changes.
CACHE_FORMAT = "cuflash-cubin-2"  # 2: the meta holds the cubin's sha256

_functions: dict = {}  # (spec, device_id) -> cupy.RawKernel
_pointers: dict = {}  # (spec, device_id) -> its CUfunction, for launches through cuLaunchKernel
_counters = {"compiles": 0, "disk_hits": 0, "memory_hits": 0}
_load_lock = threading.Lock()  # held while a kernel is compiled or loaded
_private_dir: Path | None = None  # cubins of this process when the disk cache is off


# ---------------------------------------------------------------- arch names


def parse_arch(arch: str) -> tuple[int, int]:
    """Compute capability named by an arch: 'sm_80' -> (8, 0), 'sm_90a' -> (9, 0), 'sm_120' -> (12, 0)."""
    match = re.fullmatch(r"(?:sm_|compute_)?(\d{2,3})[af]?", arch.strip())
    if match is None:
        raise ValueError(f"bad arch {arch!r}; write it like sm_80, sm_86, sm_90 or sm_90a")
    digits = match.group(1)
    return int(digits[:-1]), int(digits[-1])


def target_arch(spec, compute_capability: tuple[int, int]) -> str:
    """The arch a spec is compiled for on a GPU of this compute capability:
    ``sm_<major><minor>`` plus the spec's optional ``arch_suffix`` ("a" for
    kernels that use sm_90a-only instructions such as wgmma)."""
    major, minor = compute_capability
    return f"sm_{major}{minor}{getattr(spec, 'arch_suffix', '')}"


def builds_for(spec, arch: str) -> bool:
    """Whether ``spec`` exists for GPUs of ``arch``: specs that declare
    ``compute_capabilities`` (sm_90a-only kernels) run on those GPUs only, and
    a tile whose shared memory exceeds what such GPUs allow per block
    (support.SMEM_LIMITS; the least of them for an arch it does not list), or
    that the arch's class replaces with its own (specs.ARCH_CLASS_TILES), is
    never selected there, so it is not built for them either."""
    from .. import support

    cc = parse_arch(arch)
    only = getattr(spec, "compute_capabilities", None)
    if only is not None and cc not in only:
        return False
    return (support.smem_bytes(spec) <= support.SMEM_LIMITS.get(cc, support.SMEM_LIMIT_MIN)
            and support.offered_on(spec, cc))


def device_compute_capability(device_id: int) -> tuple[int, int]:
    import cupy

    cc = cupy.cuda.Device(device_id).compute_capability  # e.g. "90"
    return int(cc[:-1]), int(cc[-1])


# ---------------------------------------------------------------- keys and files


@dataclass(frozen=True)
class Prepared:
    """Everything needed to compile one spec for one arch, and where its cubin lives."""

    spec: object
    arch: str
    source: str
    options: tuple[str, ...]
    key: str

    @property
    def path(self) -> Path:
        return env.cache_dir() / f"{self.spec.name}.{self.arch}.{self.key[:32]}.cubin"

    @property
    def meta_path(self) -> Path:
        return self.path.with_suffix(".json")


def prepare(spec, arch: str) -> Prepared:
    """Render the spec's source and compute its cache key for ``arch`` (a target arch)."""
    text = source.render(spec)
    extra = tuple(getattr(spec, "nvrtc_options", ()))
    options = nvrtc.compile_options(arch, extra)
    major, minor = nvrtc.nvrtc_version()
    digest = hashlib.sha256()
    for part in (CACHE_FORMAT, arch, f"nvrtc {major}.{minor}", *options, text):
        digest.update(part.encode())
        digest.update(b"\0")
    return Prepared(spec, arch, text, options, digest.hexdigest())


def _compile(prepared: Prepared) -> nvrtc.CompileResult:
    spec = prepared.spec
    extra = tuple(getattr(spec, "nvrtc_options", ()))
    result = nvrtc.compile_cubin(prepared.source, spec.name, prepared.arch, extra, entry=spec.entry)
    _counters["compiles"] += 1
    logger.info("compiled %s for %s in %.2f s", spec.name, prepared.arch, result.seconds)
    if result.spills and not getattr(spec, "allow_spills", True):
        logger.warning(
            "%s for %s spills registers (%d bytes stored, %d loaded); it will run slowly",
            spec.name, prepared.arch, result.spill_stores, result.spill_loads,
        )
    if result.wgmma_serialized:
        logger.warning("%s for %s: %s", spec.name, prepared.arch, serialized_advice(nvrtc.nvrtc_version()))
    return result


#: The oldest NVRTC whose ptxas keeps the Hopper kernels' wgmma products in flight together:
#: 12.4 to 12.8 serialise some of them (fwd90_bf16_d64_full_m192n128s2, the d64 forward, among
#: others: bench/NOTES.md "NVRTC 12.8"), which ran ~30% slower where measured (b5).
NVRTC_FOR_WGMMA = (12, 9)


def nvrtc_upgrade(version: tuple[int, int]) -> str:
    """What to install where NVRTC `version` serialises Hopper kernels (older than NVRTC_FOR_WGMMA), else ""."""
    if tuple(version) >= NVRTC_FOR_WGMMA:
        return ""
    return "pip install -U 'nvidia-cuda-nvrtc-cu12>=%d.%d' (the cuda12 extra), or the cuda13 extra" % NVRTC_FOR_WGMMA


def serialized_advice(version: tuple[int, int]) -> str:
    """What to say of a kernel whose wgmma products ptxas serialised, under NVRTC `version`."""
    text = "ptxas serialised its wgmma products (NVRTC %d.%d), so it will run slowly" % tuple(version)
    upgrade = nvrtc_upgrade(version)
    if upgrade:
        text += ("; NVRTC %d.%d or newer does not: %s, then the kernel recompiles (the NVRTC version is part of the "
                 "cache key)" % (*NVRTC_FOR_WGMMA, upgrade))
    return text


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _store(prepared: Prepared, result: nvrtc.CompileResult) -> bool:
    """Write the cubin and its statistics to the disk cache; False (with a
    warning) when the cache folder is not writable."""
    try:
        prepared.path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(prepared.path, result.cubin)
        meta = {k: v for k, v in asdict(result).items() if k not in ("cubin", "log", "cached")}
        meta[_DIGEST] = hashlib.sha256(result.cubin).hexdigest()
        _write_atomic(prepared.meta_path, json.dumps(meta, indent=1).encode())
        return True
    except OSError as exc:
        logger.warning(
            "cannot write the kernel cache (%s); kernels will be compiled again in every process. "
            "Set CUFLASH_CACHE_DIR to a writable folder.", exc,
        )
        return False


#: The meta file's field holding the sha256 of its cubin.
_DIGEST = "cubin_sha256"


def _stored_meta(prepared: Prepared) -> dict | None:
    """The meta of a cached cubin whose bytes match the digest recorded when it was stored,
    else None. A cubin that is missing, truncated, overwritten or without a meta file (a
    crash between the two writes, a full disk, an older cache) must never reach the driver:
    loading a truncated cubin kills the process (a segmentation fault, measured on the H200).
    A damaged entry is removed with a warning, so it is compiled again."""
    try:
        meta = json.loads(prepared.meta_path.read_text())
        digest = meta.pop(_DIGEST)
        data = prepared.path.read_bytes()
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, AttributeError) as exc:
        meta, digest, data = None, None, b""
        reason = f"unreadable ({type(exc).__name__})"
    else:
        if hashlib.sha256(data).hexdigest() == digest:
            return meta
        reason = f"{len(data)} bytes that do not match the recorded digest"
    if prepared.path.exists() or prepared.meta_path.exists():
        logger.warning("cached kernel %s is damaged (%s); compiling it again", prepared.path, reason)
        for path in (prepared.path, prepared.meta_path):
            try:
                path.unlink()
            except OSError:
                pass
    return None


def _stored_result(prepared: Prepared) -> nvrtc.CompileResult | None:
    """The statistics of an intact cubin already in the disk cache, or None."""
    meta = _stored_meta(prepared)
    if meta is None:
        return None
    try:
        return nvrtc.CompileResult(cubin=b"", log="", cached=True, **meta)
    except TypeError:  # a meta file of another cache layout
        return None


# ---------------------------------------------------------------- runtime path


def get_function(spec, device_id: int | None = None, smem: int = 0):
    """The loaded kernel ``spec.entry`` of ``spec`` for a GPU (default: the
    current device), as a CuPy kernel function (``.ptr`` is its CUfunction; it
    can also be called with ``(grid, block, args, shared_mem=...)``). This is
    cuflash's one kernel cache, keyed by (spec, device).

    Compiles on first use (logged at INFO with the time), reading and writing
    the disk cache unless CUFLASH_DISABLE_DISK_CACHE=1. ``smem``: the dynamic
    shared memory the kernel's launches use (a function of the spec); above
    48 KB the kernel is opted in to it when it is loaded.
    """
    if device_id is None:
        from cupy.cuda import runtime

        device_id = runtime.getDevice()
    fn = _functions.get((spec, device_id))
    if fn is not None:
        _counters["memory_hits"] += 1
        return fn
    return _load(spec, device_id, smem)


def get_pointer(spec, device_id: int, smem: int = 0) -> int:
    """The CUfunction handle of get_function(spec, device_id, smem), for the launch path:
    one dict lookup once the kernel is loaded."""
    ptr = _pointers.get((spec, device_id))
    if ptr is None:
        _load(spec, device_id, smem)
        ptr = _pointers[(spec, device_id)]
    return ptr


def _opt_in_shared_memory(fn, spec, device_id: int, smem: int) -> None:
    import cupy

    limit = cupy.cuda.Device(device_id).attributes["MaxSharedMemoryPerBlockOptin"]
    if smem > limit:
        raise RuntimeError(
            f"kernel {spec.name} needs {smem} bytes of shared memory per block; GPU {device_id} allows {limit}"
        )
    fn.max_dynamic_shared_size_bytes = smem


def _load(spec, device_id: int, smem: int = 0):
    with _load_lock:  # one thread compiles a given kernel; the others then find it
        fn = _functions.get((spec, device_id))
        if fn is not None:
            _counters["memory_hits"] += 1
            return fn
        arch = target_arch(spec, device_compute_capability(device_id))
        prepared = prepare(spec, arch)
        fn = None
        if env.disk_cache_enabled() and _stored_meta(prepared) is not None:
            fn = _load_cached(prepared, device_id)
        if fn is None:
            result = _compile(prepared)
            if env.disk_cache_enabled() and _store(prepared, result):
                path = prepared.path
            else:
                path = _private_dir_path() / prepared.path.name
                path.write_bytes(result.cubin)
            fn = _load_module(path, spec.entry, device_id)
        if smem > 48 * 1024:
            _opt_in_shared_memory(fn, spec, device_id, smem)
        _functions[(spec, device_id)] = fn
        _pointers[(spec, device_id)] = _function_pointer(fn, device_id)
        return fn


def _function_pointer(fn, device_id: int) -> int:
    """The CUfunction of a loaded RawKernel on a device."""
    import cupy

    with cupy.cuda.Device(device_id):
        return fn.kernel.ptr


def _load_module(path: Path, entry: str, device_id: int):
    import cupy

    with cupy.cuda.Device(device_id):
        return cupy.RawModule(path=str(path)).get_function(entry)  # loads the module now


def _load_cached(prepared: Prepared, device_id: int):
    """The kernel from the disk cache, or None (and the file removed) when it does not load."""
    import cupy

    try:
        fn = _load_module(prepared.path, prepared.spec.entry, device_id)
    except cupy.cuda.driver.CUDADriverError as exc:
        logger.warning("cached %s does not load (%s); compiling it again", prepared.path, exc)
        try:
            prepared.path.unlink()
        except OSError:
            pass
        return None
    _counters["disk_hits"] += 1
    logger.debug("loaded %s for %s from %s", prepared.spec.name, prepared.arch, prepared.path)
    return fn


def _private_dir_path() -> Path:
    """A folder of this process for cubins that must not go to the disk cache
    (CuPy loads modules from files); removed at exit."""
    global _private_dir
    if _private_dir is None:
        _private_dir = Path(tempfile.mkdtemp(prefix="cuflash-"))
        atexit.register(shutil.rmtree, _private_dir, True)
    return _private_dir


def stats() -> dict[str, int]:
    """Counters since the process started (or clear_memory_cache):
    compiles, disk_hits, memory_hits."""
    return dict(_counters)


_clear_hooks: list = []


def on_clear(hook) -> None:
    """Call hook() whenever clear_memory_cache runs (what holds kernel handles forgets them too)."""
    _clear_hooks.append(hook)


def clear_memory_cache() -> None:
    """Forget loaded kernels and reset the counters (tests use this to force the disk path)."""
    with _load_lock:
        _functions.clear()
        _pointers.clear()
        for hook in _clear_hooks:
            hook()
        for name in _counters:
            _counters[name] = 0


# ---------------------------------------------------------------- ahead of time (no GPU)


def compile_to_cache(spec, arch: str, *, force: bool = False) -> nvrtc.CompileResult:
    """Build ``spec`` for GPUs of ``arch`` (e.g. "sm_80", "sm_90a") without a GPU
    and store the cubin in the disk cache, where ``get_function`` finds it.

    ``arch`` names the GPU; the spec is compiled for ``target_arch`` of it,
    exactly as the runtime would (a portable kernel on an sm_90a GPU is built
    for sm_90). When the cubin is already cached and ``force`` is False, the
    stored statistics are returned (``result.cached`` is True) and nothing is
    compiled. Raises CompileError or SourceError.
    """
    prepared = prepare(spec, target_arch(spec, parse_arch(arch)))
    if not force and env.disk_cache_enabled():
        stored = _stored_result(prepared)
        if stored is not None:
            return stored
    result = _compile(prepared)
    if env.disk_cache_enabled():
        _store(prepared, result)
    return result


@dataclass(frozen=True)
class Outcome:
    """One (spec, arch) of compile_many: a result (without cubin) or an error message."""

    spec: object
    arch: str  # as requested
    result: nvrtc.CompileResult | None
    error: str | None

    @property
    def spills_forbidden(self) -> bool:
        return self.result is not None and self.result.spills and not getattr(self.spec, "allow_spills", True)

    @property
    def serialized(self) -> bool:
        """ptxas serialised the kernel's wgmma products (nvrtc.CompileResult.wgmma_serialized: a
        fresh compile's log only; a cached result has no log)."""
        return self.result is not None and self.result.wgmma_serialized

    @property
    def ok(self) -> bool:
        return self.error is None and not self.spills_forbidden and not self.serialized


def _job(spec, arch: str, force: bool) -> Outcome:
    try:
        result = compile_to_cache(spec, arch, force=force)
        return Outcome(spec, arch, result.without_cubin(), None)
    except Exception as exc:  # reported with the others, so one bad kernel does not hide the rest
        return Outcome(spec, arch, None, f"{type(exc).__name__}: {exc}")


def compile_many(specs: Iterable, archs: Iterable[str], *, jobs: int | None = None, force: bool = False) -> Iterator[Outcome]:
    """compile_to_cache for every (spec, arch) where the spec builds_for the
    arch, in ``jobs`` processes (default: one per CPU); yields an Outcome as
    each finishes. Errors are returned in the Outcome, not raised, so one bad
    kernel does not hide the others."""
    tasks = [(spec, arch) for spec in specs for arch in archs if builds_for(spec, arch)]
    jobs = max(1, min(jobs or cpu_count(), len(tasks) or 1))
    if jobs == 1:
        for spec, arch in tasks:
            yield _job(spec, arch, force)
        return
    import multiprocessing

    # spawn: the parent may hold a CUDA context, which a forked child must not inherit.
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_job, spec, arch, force) for spec, arch in tasks]
        for future in as_completed(futures):
            yield future.result()


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
