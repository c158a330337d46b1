"""Render a kernel spec into one self-contained CUDA source string.

``render(spec)`` reads ``kernels_dir()/spec.source``, inlines every quoted
``#include "..."`` (each header once, like ``#pragma once``), marks every
switch of file with a ``#line`` directive so compiler messages name the real
file and line, and prepends the spec's ``#define`` lines.

Because every header is inlined, a hash of the rendered text is a hash of all
the code that goes into the kernel: editing any included header changes the
cache key (CuPy's own cache would not notice). Paths in ``#line`` directives are
relative to the kernels folder, so the text (and the key) is the same in every
checkout and install.

Angle-bracket includes (``#include <cuda_bf16.h>``) are left to NVRTC.
"""
from __future__ import annotations

import re
from pathlib import Path

from . import env

_INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"')
_PRAGMA_ONCE = re.compile(r"^\s*#\s*pragma\s+once\b")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class SourceError(Exception):
    """A kernel source or one of its headers cannot be read."""


def render(spec, kernels_dir: Path | None = None) -> str:
    """The full CUDA source of one spec: a header comment, its defines, then the
    kernel file with every quoted include inlined. Deterministic."""
    root = Path(kernels_dir) if kernels_dir is not None else env.kernels_dir()
    root = root.resolve()
    main = root / spec.source
    if not main.is_file():
        raise SourceError(
            f"kernel source {spec.source!r} of {spec.name} not found in {root}; "
            "check the spec's `source` or CUFLASH_KERNELS_DIR"
        )
    out = [
        f"// cuflash kernel {spec.name}: rendered from {spec.source} (headers inlined). Do not edit.",
    ]
    for name, value in spec.defines().items():
        out.append(f"#define {name} {_define_value(name, value)}")
    _inline(main, root, out, seen=set(), stack=[])
    out.append("")
    return "\n".join(out)


def _define_value(name: str, value) -> str:
    if not _IDENTIFIER.match(name):
        raise SourceError(f"define name {name!r} is not a C identifier")
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, float, str)):
        text = str(value)
        if "\n" in text:
            raise SourceError(f"define {name} has a newline in its value")
        return text
    raise SourceError(f"define {name}: value {value!r} must be an int, float, bool or str")


def _display(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:  # a header outside the kernels folder
        return path.as_posix()


def _inline(path: Path, root: Path, out: list[str], seen: set[Path], stack: list[Path]) -> None:
    seen.add(path)
    shown = _display(path, root)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"cannot read {path}: {exc}") from exc
    out.append(f'#line 1 "{shown}"')
    for number, line in enumerate(lines, start=1):
        match = _INCLUDE.match(line)
        if match is None:
            # An inlined header's `#pragma once` would warn in the main file.
            out.append("" if stack and _PRAGMA_ONCE.match(line) else line)
            continue
        header = _resolve(match.group(1), path, root, shown, number)
        if header not in seen:
            _inline(header, root, out, seen, stack + [path])
            out.append(f'#line {number + 1} "{shown}"')
        else:
            out.append(f"// (already included: {match.group(1)})")


def _resolve(name: str, including: Path, root: Path, shown: str, number: int) -> Path:
    """A quoted include: relative to the including file, then to the kernels folder."""
    tried = []
    for base in (including.parent, root):
        candidate = (base / name).resolve()
        if candidate.is_file():
            return candidate
        tried.append(str(candidate))
    raise SourceError(
        f'{shown}:{number}: #include "{name}" not found; looked for ' + " and ".join(dict.fromkeys(tried))
    )
