"""Compare the machine code of two kernel caches: did a source change alter the kernels?

    python bench/compare_cubins.py OLD_CACHE_DIR NEW_CACHE_DIR

Fill each folder with `CUFLASH_CACHE_DIR=... cuflash compile --arch ... --features ...` from the
two versions of the sources. Cubins are matched by kernel name and arch (the cache key differs when
the source text does), and each kernel's .text section is compared byte for byte: equal bytes are
equal SASS, so a refactor that leaves them equal cannot change results or speed. Needs pyelftools
(pip install pyelftools; a development tool, not a cuflash dependency).
"""
from __future__ import annotations

import sys
from pathlib import Path


def texts(folder: Path) -> dict:
    """{(kernel name, arch): {section name: bytes}} of the .text sections of every cubin."""
    from elftools.elf.elffile import ELFFile

    out = {}
    for path in sorted(folder.glob("*.cubin")):
        name, arch, _key, _ = path.name.rsplit(".", 3)
        with path.open("rb") as f:
            elf = ELFFile(f)
            out[(name, arch)] = {s.name: s.data() for s in elf.iter_sections() if s.name.startswith(".text")}
    return out


def main(argv=None) -> int:
    old_dir, new_dir = (Path(a) for a in (argv or sys.argv[1:]))
    old, new = texts(old_dir), texts(new_dir)
    common = sorted(old.keys() & new.keys())
    changed = [k for k in common if old[k] != new[k]]
    for name, arch in changed:
        sizes = {s: (len(old[(name, arch)].get(s, b"")), len(new[(name, arch)].get(s, b""))) for s in
                 old[(name, arch)].keys() | new[(name, arch)].keys()}
        print(f"changed  {name} {arch}: " + ", ".join(f"{s} {a} -> {b} bytes" for s, (a, b) in sizes.items()))
    only = sorted(old.keys() ^ new.keys())
    print(f"{len(common)} kernels in both: {len(common) - len(changed)} identical, {len(changed)} changed; "
          f"{len(only)} in one folder only")
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main())
