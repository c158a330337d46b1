"""bench/sass_ops.py's reading of a listing: opcode counts, loops and branch-free runs, on a small
listing of the shape nvdisasm writes."""
from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("sass_ops", REPO / "bench" / "sass_ops.py")
sass_ops = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sass_ops)

LISTING = """// .text.cuflash_bwd
        /*0000*/                   IMAD.MOV.U32 R1, RZ, RZ, c[0x0][0x28] ;
        /*0010*/                   ISETP.GE.AND P0, PT, R2, UR4, PT ;
        /*0020*/               @P0 BRA 0x90 ;
        /*0030*/                   LDSM.16.M88.4 R4, [R3] ;
        /*0040*/                   HMMA.16816.F32.BF16 R8, R4, R6, R8 ;
        /*0050*/                   MUFU.EX2 R9, R9 ;
        /*0060*/                   VIADD R3, R3, 0x20 ;
        /*0070*/              @!P1 BRA P2, 0x30 ;
        /*0080*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0090*/                   REDG.E.ADD.F32x2.FTZ.RN.STRONG.GPU desc[UR24][R138.64], R220 ;
        /*00a0*/                   EXIT ;
        /*00b0*/                   BRA 0xb0;
"""


def test_opcodes_count_base_names_and_mufu_functions():
    counts = sass_ops.opcodes(LISTING)
    assert counts["BRA"] == 3 and counts["HMMA"] == 1 and counts["MUFU"] == 1 and counts["MUFU.EX2"] == 1
    assert sum(v for k, v in counts.items() if "." not in k) == 12


def test_loops_are_branches_back_and_the_trap_is_not_one():
    found = sass_ops.loops(LISTING)
    assert [(start, end) for start, end, _ in found] == [(0x30, 0x70)]
    body = found[0][2]
    assert body == {"LDSM": 1, "HMMA": 1, "MUFU": 1, "VIADD": 1, "BRA": 1}


def test_straight_runs_end_at_branches_barriers_and_exits():
    runs = sass_ops.straight_runs(LISTING, 2)
    assert [(start, end, sum(c.values())) for start, end, c in runs] == [(0x30, 0x60, 4), (0x0, 0x10, 2)]
