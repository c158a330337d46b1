"""Every CUFLASH_* environment variable, and the paths they resolve to.

This module is the one place in cuflash that reads the environment. Values are
read at call time (never cached at import), so a test or a long-lived process
that changes a variable sees the change on the next call.

``ENV_VARS`` is the table that the README and ``cuflash info`` both show; a CPU
test checks that the README table lists exactly these names.
"""
from __future__ import annotations

import logging
import functools
import os
import shlex
from pathlib import Path
from typing import NamedTuple


class EnvVar(NamedTuple):
    name: str
    default: str  # as shown to people
    meaning: str


ENV_VARS: tuple[EnvVar, ...] = (
    EnvVar(
        "CUFLASH_CACHE_DIR",
        "`$XDG_CACHE_HOME/cuflash`, else `~/.cache/cuflash`",
        "Folder of the on-disk kernel cache (compiled cubins). Safe to delete; safe to share between processes.",
    ),
    EnvVar(
        "CUFLASH_DISABLE_DISK_CACHE",
        "`0`",
        "`1` = never read or write the disk cache: every process compiles the kernels it uses.",
    ),
    EnvVar(
        "CUFLASH_DISABLE_SM90",
        "`0`",
        "`1` = run the portable (mma.sync) kernels on Hopper too, instead of the sm_90a (wgmma) ones.",
    ),
    EnvVar(
        "CUFLASH_KERNELS_DIR",
        "the `kernels_cu/` of the checkout or of the installed package",
        "Folder of the CUDA sources to compile (for kernel development).",
    ),
    EnvVar(
        "CUFLASH_LOG_LEVEL",
        "`WARNING`",
        "Level of the `cuflash` logger (`DEBUG`, `INFO`, ...). When set, cuflash also prints its log to stderr. "
        "`INFO` shows each kernel compile and its time.",
    ),
    EnvVar(
        "CUFLASH_NVRTC_OPTIONS",
        "empty",
        "Extra NVRTC options appended to every compile, split like a shell line (e.g. `-lineinfo`). "
        "They are part of the cache key.",
    ),
    EnvVar(
        "CUFLASH_SMEM_LIMIT",
        "the GPU's (from its compute capability)",
        "Bytes of shared memory per block that the tile choice assumes, e.g. `166912` (A100) or `101376` "
        "(RTX 3090/4090): tests use it to run the tiles of a smaller GPU on a larger one.",
    ),
    EnvVar(
        "CUFLASH_TMA",
        "`1`",
        "`0` = the Hopper forward (q, k, v) and backward (q, k, v, dout) load with "
        "cp.async instead of TMA tensor maps (for comparison; calls TMA cannot address, calls of little work, "
        "a varlen sequence's last partial block, the varlen backward's K and V, and the varlen backward of "
        "bwd_sm90.cu (d256, bias, dropout) use cp.async anyway: cuflash/tma.py).",
    ),
)

ENV_VAR_NAMES = frozenset(v.name for v in ENV_VARS)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


def _get(name: str) -> str | None:
    assert name in ENV_VAR_NAMES, f"{name} is not declared in ENV_VARS"
    value = os.environ.get(name)
    return value.strip() if value is not None else None


def _flag(name: str) -> bool:
    value = (_get(name) or "").lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name}={os.environ[name]!r}: use 1 (on) or 0 (off)")


def cache_dir() -> Path:
    """Folder of the on-disk cubin cache (not created here)."""
    explicit = _get("CUFLASH_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "cuflash"


def disk_cache_enabled() -> bool:
    return not _flag("CUFLASH_DISABLE_DISK_CACHE")


def sm90_enabled() -> bool:
    """Whether Hopper GPUs run the sm_90a kernels where cuflash has them (read on every
    call, as tests switch it; the parse is memoised on the raw value)."""
    if _ENVIRON_BYTES is not None:
        return _sm90_enabled(_ENVIRON_BYTES.get(b"CUFLASH_DISABLE_SM90"))
    return _sm90_enabled(os.environ.get("CUFLASH_DISABLE_SM90"))


def tma_enabled() -> bool:
    """Whether the Hopper forward and backward may load with TMA (CUFLASH_TMA, default on; read on every call)."""
    if _ENVIRON_BYTES is not None:
        return _tma_enabled(_ENVIRON_BYTES.get(b"CUFLASH_TMA"))
    return _tma_enabled(os.environ.get("CUFLASH_TMA"))


@functools.lru_cache(maxsize=8)
def _tma_enabled(raw) -> bool:
    return raw is None or _flag("CUFLASH_TMA")


def selection_key() -> tuple:
    """The raw values of the variables that steer spec selection and launches (CUFLASH_DISABLE_SM90,
    CUFLASH_SMEM_LIMIT, CUFLASH_TMA), for keys of memoised launch plans: a plan made under other
    values is not reused."""
    if _ENVIRON_BYTES is not None:
        return (_ENVIRON_BYTES.get(b"CUFLASH_DISABLE_SM90"), _ENVIRON_BYTES.get(b"CUFLASH_SMEM_LIMIT"),
                _ENVIRON_BYTES.get(b"CUFLASH_TMA"))
    return os.environ.get("CUFLASH_DISABLE_SM90"), os.environ.get("CUFLASH_SMEM_LIMIT"), os.environ.get("CUFLASH_TMA")


def smem_limit_override() -> int | None:
    """CUFLASH_SMEM_LIMIT as bytes, or None when unset (read on every call, like sm90_enabled)."""
    raw = _ENVIRON_BYTES.get(b"CUFLASH_SMEM_LIMIT") if _ENVIRON_BYTES is not None else (
        os.environ.get("CUFLASH_SMEM_LIMIT"))
    return None if raw is None else _smem_limit(raw)


@functools.lru_cache(maxsize=8)
def _smem_limit(raw) -> int | None:
    text = (raw.decode() if isinstance(raw, bytes) else raw).strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise ValueError(f"CUFLASH_SMEM_LIMIT={text!r}: give the bytes of shared memory per block, e.g. 166912")
    return value


# os.environ.get of an absent variable raises and catches a KeyError inside (~2 µs); on POSIX the
# bytes dict behind os.environ (kept in step with it by os.environ's own setters) answers in ~50 ns.
_ENVIRON_BYTES = getattr(os.environ, "_data", None) if os.name == "posix" else None


@functools.lru_cache(maxsize=8)
def _sm90_enabled(raw) -> bool:
    return not _flag("CUFLASH_DISABLE_SM90")


def nvrtc_extra_options() -> tuple[str, ...]:
    """CUFLASH_NVRTC_OPTIONS split like a shell command line."""
    return tuple(shlex.split(_get("CUFLASH_NVRTC_OPTIONS") or ""))


#: cuflash/ (the package folder); kernels_cu/ sits beside it in a checkout and
#: inside it (as package data) in an installed wheel.
_PACKAGE_DIR = Path(__file__).resolve().parent.parent


def kernels_dir() -> Path:
    """Folder of the CUDA sources (``fwd.cu``, ``common/*.cuh``, ...).

    1. ``CUFLASH_KERNELS_DIR`` when set;
    2. ``kernels_cu/`` beside the ``cuflash/`` package: a source checkout, used
       as is (``PYTHONPATH=.``) or through an editable install;
    3. ``cuflash/kernels_cu/``: the copy a wheel installs as package data.
    """
    explicit = _get("CUFLASH_KERNELS_DIR")
    if explicit:
        path = Path(explicit).expanduser().resolve()
        if not path.is_dir():
            raise FileNotFoundError(f"CUFLASH_KERNELS_DIR={explicit!r} is not a folder; unset it or point it at a kernels_cu/ folder")
        return path
    candidates = (_PACKAGE_DIR.parent / "kernels_cu", _PACKAGE_DIR / "kernels_cu")
    for path in candidates:
        if path.is_dir():
            return path
    raise FileNotFoundError(
        "cuflash cannot find its CUDA sources; looked in " + ", ".join(str(p) for p in candidates)
        + ". Reinstall cuflash, or set CUFLASH_KERNELS_DIR to a kernels_cu/ folder."
    )


def cuda_toolkit_roots() -> list[Path]:
    """Where a CUDA toolkit may be installed: $CUDA_PATH, $CUDA_HOME, /usr/local/cuda
    (NVRTC's include path for angle-bracket headers, after the pip packages)."""
    roots = [os.environ.get(var, "").strip() for var in ("CUDA_PATH", "CUDA_HOME")]
    return [Path(r) for r in roots if r] + [Path("/usr/local/cuda")]


def log_level() -> int | None:
    """The level CUFLASH_LOG_LEVEL asks for, or None when it is not set."""
    value = _get("CUFLASH_LOG_LEVEL")
    if not value:
        return None
    if value.isdigit():
        return int(value)
    level = logging.getLevelName(value.upper())
    if not isinstance(level, int):
        raise ValueError(f"CUFLASH_LOG_LEVEL={value!r}: use DEBUG, INFO, WARNING or ERROR")
    return level


_handler: logging.Handler | None = None


def configure_logging() -> logging.Logger:
    """Apply CUFLASH_LOG_LEVEL to the ``cuflash`` logger (idempotent).

    When the variable is set, a stderr handler is attached as well, so that the
    level has a visible effect without any logging setup in the application.
    When it is not set, nothing is changed (the application's logging rules).
    """
    global _handler
    logger = logging.getLogger("cuflash")
    level = log_level()
    if level is None:
        return logger
    logger.setLevel(level)
    if _handler is None:
        _handler = logging.StreamHandler()
        _handler.setFormatter(logging.Formatter("cuflash %(levelname)s: %(message)s"))
        logger.addHandler(_handler)
        # The handler above prints; do not print each record twice through an
        # application's root handler.
        logger.propagate = False
    return logger


def markdown_table() -> str:
    """The README's table of variables (tests/cpu/test_env.py keeps the two equal)."""
    rows = ["| Variable | Default | Meaning |", "| --- | --- | --- |"]
    rows += [f"| `{v.name}` | {v.default} | {v.meaning} |" for v in ENV_VARS]
    return "\n".join(rows)


def current_values() -> list[tuple[EnvVar, str | None]]:
    """(variable, value or None when unset) for every variable in ENV_VARS."""
    return [(var, os.environ.get(var.name)) for var in ENV_VARS]
