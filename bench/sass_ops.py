"""Read a compiled kernel's machine code without a GPU: opcode counts, or the whole listing.

    python bench/sass_ops.py CUBIN_OR_CACHE_DIR [OTHER] [--only SUBSTR] [--dump DIR] [--loops]

Fill a cache folder with `CUFLASH_CACHE_DIR=DIR cuflash compile --arch sm_90a --only ...`. For every
cubin (of a folder: those whose kernel name contains --only) this prints the instruction count and the
commonest opcodes (their base names: FFMA, MUFU, HGMMA, ...), and MUFU split by function; given two
paths, the second's counts come out beside the first's, kernel by kernel (matched by name and arch). --dump
writes each listing to DIR/NAME.ARCH.sass. --loops lists each loop (a branch back to an earlier address)
with its body's instruction count and commonest opcodes, and the longest branch-free runs of code: where a
kernel's instructions are spent per iteration, e.g. bwd.cu's dQ reductions that rebuilt their 64-bit
address each time (bench/NOTES.md pb1).

nvdisasm refuses NVRTC's cubins as ELF files ("invalid ELF file"), so this hands it each .text section as
a raw instruction binary (`nvdisasm -b SM90a`), taking the arch from the cubin's name. nvdisasm comes
from pip's `nvidia-cuda-nvdisasm` wheel (a development tool, not a cuflash dependency; any 13.x reads
sm_80 to sm_120), found on PATH or as $NVDISASM; pyelftools reads the cubins (pip install pyelftools).
Static counts: a loop's body counts once, so compare kernels whose loops have the same structure.
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

_INSTRUCTION = re.compile(r"^\s*/\*([0-9a-f]+)\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*)((?:\.[A-Z0-9_]+)*)")
_BRANCH_TARGET = re.compile(r"\bBRA\s+(?:!?U?P[T0-9]+\s*,\s*)?0x([0-9a-f]+)")


def nvdisasm() -> str:
    path = os.environ.get("NVDISASM") or shutil.which("nvdisasm")
    if not path:
        sys.exit("sass_ops: nvdisasm not found: pip install nvidia-cuda-nvdisasm, then put its bin/ "
                 "(site-packages/nvidia/cu13/bin) on PATH or set NVDISASM")
    return path


def cubins(path: Path, only: str) -> dict:
    """{(kernel name, arch): cubin path} for one cubin, or those of a cache folder."""
    found = {}
    for cubin in sorted(path.glob("*.cubin")) if path.is_dir() else [path]:
        name, arch = cubin.name.split(".")[:2]
        if only in name:
            found[(name, arch)] = cubin
    return found


def listing(cubin: Path, arch: str, tool: str) -> str:
    """The SASS of every .text section of one cubin, disassembled as raw instructions."""
    from elftools.elf.elffile import ELFFile

    target = "SM" + arch.removeprefix("sm_")
    parts = []
    with cubin.open("rb") as f, tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "text.bin"
        for section in ELFFile(f).iter_sections():
            if section.name.startswith(".text."):
                raw.write_bytes(section.data())
                run = subprocess.run([tool, "-b", target, str(raw)], capture_output=True, text=True, check=True)
                parts.append(f"// {section.name}\n{run.stdout}")
    return "\n".join(parts)


def instructions(sass: str) -> list[tuple[int, str, str, str]]:
    """(address, base opcode, suffixes, line) of each instruction, in order."""
    found = []
    for line in sass.splitlines():
        m = _INSTRUCTION.match(line)
        if m:
            found.append((int(m.group(1), 16), m.group(2), m.group(3), line))
    return found


def opcodes(sass: str) -> collections.Counter:
    """Base opcode -> count, and MUFU.<function> -> count beside it."""
    counts = collections.Counter()
    for _, op, suffixes, _ in instructions(sass):
        counts[op] += 1
        if op == "MUFU" and suffixes:
            counts["MUFU." + suffixes.split(".")[1]] += 1
    return counts


def loops(sass: str) -> list[tuple[int, int, collections.Counter]]:
    """(first address, branch address, opcode counts of the body) of each branch back to an earlier
    instruction, in the order of the branches; a branch to itself (the trap after EXIT) is not a loop."""
    found = []
    listed = instructions(sass)
    for address, op, _, line in listed:
        m = _BRANCH_TARGET.search(line) if op == "BRA" else None
        if m and int(m.group(1), 16) < address:
            start = int(m.group(1), 16)
            found.append((start, address, collections.Counter(o for a, o, _, _ in listed if start <= a <= address)))
    return found


def straight_runs(sass: str, count: int) -> list[tuple[int, int, collections.Counter]]:
    """The `count` longest runs of instructions without a branch or barrier, as (first address, last
    address, opcode counts), longest first."""
    runs, current = [], []
    for address, op, _, _ in instructions(sass) + [(-1, "BRA", "", "")]:
        if op in ("BRA", "BAR", "EXIT", "BSYNC", "BSSY", "WARPSYNC"):
            if current:
                runs.append((current[0][0], current[-1][0], collections.Counter(o for _, o in current)))
            current = []
        else:
            current.append((address, op))
    return sorted(runs, key=lambda r: -sum(r[2].values()))[:count]


def describe(counts: collections.Counter, top: int) -> str:
    return f"{sum(counts.values())} instructions ({', '.join(f'{k} {v}' for k, v in counts.most_common(top))})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("paths", nargs="+", type=Path, help="cubins or cache folders (two: compared)")
    ap.add_argument("--only", default="", help="kernel names containing this")
    ap.add_argument("--top", type=int, default=24, help="opcodes listed per kernel")
    ap.add_argument("--dump", type=Path, help="write each listing to DIR/NAME.ARCH.sass")
    ap.add_argument("--loops", action="store_true", help="list each loop's body and the longest branch-free runs")
    args = ap.parse_args(argv)
    if len(args.paths) > 2:
        ap.error("one path, or two to compare")
    tool = nvdisasm()
    found = [cubins(p, args.only) for p in args.paths]
    for key in sorted(found[0]):
        name, arch = key
        counts, listings = [], []
        for side in found:
            if key in side:
                sass = listing(side[key], arch, tool)
                counts.append(opcodes(sass))
                listings.append(sass)
                if args.dump:
                    args.dump.mkdir(parents=True, exist_ok=True)
                    (args.dump / f"{name}.{arch}{'' if len(counts) == 1 else '.2'}.sass").write_text(sass)
        total = [sum(v for k, v in c.items() if "." not in k) for c in counts]
        print(f"{name} {arch}: {' -> '.join(str(t) for t in total)} instructions")
        order = [k for k, _ in counts[-1].most_common()] + [k for k in counts[0] if k not in counts[-1]]
        cells = [f"{k} {'/'.join(str(c.get(k, 0)) for c in counts)}" for k in order[:args.top]]
        print("  " + ", ".join(cells))
        for label, sass in zip(("", "(2) ") if len(listings) == 2 else ("",), listings):
            if args.loops:
                for start, end, body in loops(sass):
                    print(f"  {label}loop 0x{start:x}-0x{end:x}: {describe(body, 8)}")
                for start, end, body in straight_runs(sass, 3):
                    print(f"  {label}run 0x{start:x}-0x{end:x}: {describe(body, 8)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
