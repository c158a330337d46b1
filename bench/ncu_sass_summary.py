"""Summarise ncu's per-instruction SASS page: where a kernel's issue slots and stalls go.

    ncu -k regex:cuflash_fwd -c 1 --set full --import-source no -o F python3 bench/profile_case.py ...
    ncu -i F.ncu-rep --page source --csv --print-source sass > F.sass.csv
    python3 bench/ncu_sass_summary.py F.sass.csv [--top 25] [--around LDGSTS]

Prints the stall reasons of the sampled warps, the share of samples and of executed warp instructions
per opcode, and the hottest instructions. --around OPCODE also splits the executed instructions into
the stretch of code between the first and last instruction of that opcode that runs as often as the
most frequent one (e.g. LDGSTS: a producer's K/V loop) and the rest (bench/NOTES.md v15 found the
forward's producer loop issuing 29% of the kernel's instructions this way). Needs only the standard
library, so the CSV can be read on a machine without ncu.
"""
from __future__ import annotations

import argparse
import collections
import csv
import re
import sys


def read(path: str) -> list[dict]:
    """The instruction rows of an ncu source-page CSV (its first line names the kernel, the second
    holds the column names): dicts with source, opcode, samples, executed and stall_* counts."""
    with open(path, newline="") as f:
        lines = list(csv.reader(f))
    header = next(i for i, row in enumerate(lines) if "Source" in row and "Address" in row)
    names = lines[header]
    col = {name: i for i, name in enumerate(names)}
    stalls = [n for n in names if n.startswith("stall_") and "Not Issued" not in n]
    rows = []
    for row in lines[header + 1:]:
        if len(row) < len(names):
            continue
        source = row[col["Source"]].strip()
        rows.append({
            "source": source,
            "opcode": opcode(source),
            "samples": _int(row[col["Warp Stall Sampling (All Samples)"]]),
            "executed": _int(row[col["Instructions Executed"]]),
            "stalls": {n[len("stall_"):]: _int(row[col[n]]) for n in stalls},
        })
    return rows


def opcode(source: str) -> str:
    """'@!P0 BRA 0x...' -> 'BRA', 'HGMMA.64x128x16.F32.BF16 R24, ...' -> 'HGMMA'."""
    text = re.sub(r"^@!?U?P\w+\s+", "", source)
    return text.split(" ")[0].split(".")[0]


def _int(text: str) -> int:
    try:
        return int(text.replace(",", ""))
    except ValueError:
        return 0


def summary(rows: list[dict], top: int = 25, around: str | None = None) -> str:
    out = []
    samples = sum(r["samples"] for r in rows) or 1
    executed = sum(r["executed"] for r in rows) or 1
    reasons = collections.Counter()
    for r in rows:
        reasons.update(r["stalls"])
    out.append(f"{samples} samples, {executed} warp instructions executed")
    out.append("stall reasons (share of samples):")
    out += [f"  {name:20s} {n:10d} {100 * n / samples:5.1f}%" for name, n in reasons.most_common(12) if n]
    by_samples, by_executed = collections.Counter(), collections.Counter()
    for r in rows:
        by_samples[r["opcode"]] += r["samples"]
        by_executed[r["opcode"]] += r["executed"]
    out.append("opcodes (share of executed instructions, share of samples):")
    out += [f"  {op:12s} {n:12d} {100 * n / executed:5.1f}%  {100 * by_samples[op] / samples:5.1f}%"
            for op, n in by_executed.most_common(20)]
    if around:
        hits = [i for i, r in enumerate(rows) if r["opcode"] == around]
        if hits:
            most = max(rows[i]["executed"] for i in hits)
            loop = [i for i in hits if rows[i]["executed"] == most]
            first, last = loop[0], loop[-1]  # widened to the neighbours that run as often
            while first > 0 and rows[first - 1]["executed"] == most:
                first -= 1
            while last + 1 < len(rows) and rows[last + 1]["executed"] == most:
                last += 1
            inside = sum(r["executed"] for r in rows[first:last + 1])
            out.append(f"instructions {first}..{last} (around the {len(loop)} {around} executed {most} times "
                       f"each): {inside} executed, {100 * inside / executed:.1f}% of all, "
                       f"{inside / (len(loop) * most):.1f} per {around}")
        else:
            out.append(f"no {around} instruction")
    out.append(f"hottest {top} instructions (samples, share, main stall reasons):")
    for i, r in sorted(enumerate(rows), key=lambda ir: -ir[1]["samples"])[:top]:
        main = {k: v for k, v in r["stalls"].items() if v > 0.15 * r["samples"]}
        out.append(f"  {i:5d} {r['samples']:7d} {100 * r['samples'] / samples:5.1f}%  {r['source'][:64]:64s} {main}")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--around", help="an opcode whose loop to measure (e.g. LDGSTS)")
    args = ap.parse_args(argv)
    print(summary(read(args.csv), args.top, args.around))
    return 0


if __name__ == "__main__":
    sys.exit(main())
