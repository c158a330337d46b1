"""bench/ncu_sass_summary.py on a small ncu source-page CSV of the shape ncu writes."""
from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("ncu_sass_summary", REPO / "bench" / "ncu_sass_summary.py")
summ = importlib.util.module_from_spec(spec)
spec.loader.exec_module(summ)

COLUMNS = ["Address", "Source", "Warp Stall Sampling (All Samples)", "Warp Stall Sampling (Not-issued Samples)",
           "Instructions Executed", "stall_wait", "stall_long_sb", "stall_wait (Not Issued)"]
ROWS = [  # source, samples, executed, wait, long_sb
    ("HGMMA.64x128x16.F32.BF16 R24, gdesc[UR20], R24", 10, 100, 8, 0),
    ("IADD3 R6, P3, R6, UR8, RZ", 2, 400, 0, 0),
    ("LDGSTS.E.BYPASS.128 desc[UR26][R2.64], P0, [R40]", 1, 400, 0, 0),
    ("@!P6  BRA 0x7ff3277b0a70", 30, 400, 0, 25),
    ("LDGSTS.E.BYPASS.128 desc[UR26][R4.64], P1, [R41]", 1, 400, 0, 0),
    ("SEL R7, R52, RZ, P6", 1, 400, 0, 0),
    ("EXIT", 0, 4, 0, 0),
]


def write_csv(path: Path) -> None:
    lines = ['"Kernel Name","cuflash_fwd_sm90",', ",".join(f'"{c}"' for c in COLUMNS)]
    for i, (src, samples, executed, wait, long_sb) in enumerate(ROWS):
        values = [f"0x{16 * i:x}", src, samples, samples, executed, wait, long_sb, wait]
        lines.append(",".join(f'"{v}"' for v in values))
    path.write_text("\n".join(lines) + "\n")


def test_opcodes_are_read_without_predicates_and_modifiers():
    assert summ.opcode("@!P6  BRA 0x7ff3277b0a70") == "BRA"
    assert summ.opcode("@UP0 HGMMA.64x128x16.F32.BF16 R24, gdesc[UR20], R24") == "HGMMA"
    assert summ.opcode("R2UR UR20, R22") == "R2UR"


def test_summary_counts_samples_stalls_and_the_loop_around_an_opcode(tmp_path):
    path = tmp_path / "k.sass.csv"
    write_csv(path)
    rows = summ.read(str(path))
    assert [r["opcode"] for r in rows] == ["HGMMA", "IADD3", "LDGSTS", "BRA", "LDGSTS", "SEL", "EXIT"]
    assert rows[3]["stalls"] == {"wait": 0, "long_sb": 25}
    text = summ.summary(rows, top=2, around="LDGSTS")
    assert "45 samples, 2104 warp instructions executed" in text
    assert "long_sb" in text and "55.6%" in text  # 25 of 45 samples
    # the loop: the two LDGSTS and their neighbours that run as often (rows 1-5), 2000 of 2104
    assert "instructions 1..5 (around the 2 LDGSTS executed 400 times each): 2000 executed, 95.1% of all, " \
           "2.5 per LDGSTS" in text
    assert "no MUFU instruction" in summ.summary(rows, around="MUFU")
