"""Feature switches, kernel selection and params packing: pure Python, no CUDA."""
from __future__ import annotations

from dataclasses import replace
from itertools import combinations

import numpy as np
import pytest

from cuflash import launch, params, specs, support
from cuflash.compile import cache
from cuflash.specs import (
    ARCH_CLASS_TILES,
    BwdPrepareSpec,
    CAUSAL,
    MASKS,
    MODIFIERS,
    PLAIN,
    AttentionSpec,
    BwdSm90Spec,
    BwdSpec,
    Features,
    FwdSm90Spec,
    FwdSm90Tiles,
    FwdSpec,
)
from cuflash.support import Problem

# ---------------------------------------------------------------- Features.parse


@pytest.mark.parametrize(
    "text, expected",
    [
        ("causal", Features("causal")),
        ("window", Features("local")),
        ("local", Features("local")),
        ("softcap", Features(softcap=True)),
        ("alibi", Features(alibi=True)),
        ("sink", Features(sink=True)),
    ],
)
def test_parse_each_word(text, expected):
    assert Features.parse(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("window,softcap", Features("local", softcap=True)),
        ("softcap,window", Features("local", softcap=True)),  # order does not matter
        (" causal , alibi ,sink", Features("causal", alibi=True, sink=True)),
        ("window,softcap,alibi,sink", Features("local", True, True, True)),
        ("softcap,softcap", Features(softcap=True)),  # repeats are harmless
    ],
)
def test_parse_combinations(text, expected):
    assert Features.parse(text) == expected


@pytest.mark.parametrize("text", ["", " ", ",", " , ,"])
def test_parse_empty_is_plain(text):
    assert Features.parse(text) == PLAIN
    assert Features.parse(text).mask == "none"


def test_parse_unknown_word_names_it():
    with pytest.raises(ValueError, match=r"unknown feature.*'paged'") as info:
        Features.parse("causal,paged")
    assert "softcap" in str(info.value)  # and lists what is known


def test_parse_causal_and_window_is_refused():
    for text in ("causal,window", "window,causal", "causal,local"):
        with pytest.raises(ValueError, match="causal and window"):
            Features.parse(text)


def test_unknown_mask_is_refused():
    with pytest.raises(ValueError, match="mask must be one of"):
        Features("sliding")


# ---------------------------------------------------------------- tags, backward, defines


@pytest.mark.parametrize(
    "features, tag",
    [
        (PLAIN, "full"),
        (CAUSAL, "causal"),
        (Features("local"), "local"),
        (Features(softcap=True), "full_softcap"),
        (Features("causal", alibi=True), "causal_alibi"),
        (Features("local", softcap=True, alibi=True, sink=True), "local_softcap_alibi_sink"),
        (Features.parse("sink,alibi,window,softcap"), "local_softcap_alibi_sink"),  # fixed modifier order
    ],
)
def test_tag(features, tag):
    assert features.tag == tag


def test_tags_are_distinct_for_every_feature_set():
    every = [Features(mask, *flags) for mask in MASKS for flags in _flag_combinations()]
    assert len(every) == len(MASKS) * 2 ** len(MODIFIERS)
    assert len({f.tag for f in every}) == len(every)


def _flag_combinations():
    """Every on/off choice of the modifiers, positionally (the bias's "on" is 16: its own dtype)."""
    on = [16 if m == "bias" else True for m in MODIFIERS]
    off = [0 if m == "bias" else False for m in MODIFIERS]
    return [tuple(on[b] if i >> b & 1 else off[b] for b in range(len(MODIFIERS))) for i in range(2 ** len(MODIFIERS))]


def test_causal_property():
    assert CAUSAL.causal and not PLAIN.causal and not Features("local").causal


@pytest.mark.parametrize(
    "features, defines",
    [
        (PLAIN, dict(CUFLASH_MASK=0, CUFLASH_SOFTCAP=0, CUFLASH_ALIBI=0, CUFLASH_SINK=0, CUFLASH_DROPOUT=0,
                     CUFLASH_BIAS=0, CUFLASH_VARLEN=0)),
        (CAUSAL, dict(CUFLASH_MASK=1, CUFLASH_SOFTCAP=0, CUFLASH_ALIBI=0, CUFLASH_SINK=0, CUFLASH_DROPOUT=0,
                      CUFLASH_BIAS=0, CUFLASH_VARLEN=0)),
        (Features.parse("window,softcap"),
         dict(CUFLASH_MASK=2, CUFLASH_SOFTCAP=1, CUFLASH_ALIBI=0, CUFLASH_SINK=0, CUFLASH_DROPOUT=0,
              CUFLASH_BIAS=0, CUFLASH_VARLEN=0)),
        (Features.parse("alibi,sink"),
         dict(CUFLASH_MASK=0, CUFLASH_SOFTCAP=0, CUFLASH_ALIBI=1, CUFLASH_SINK=1, CUFLASH_DROPOUT=0,
              CUFLASH_BIAS=0, CUFLASH_VARLEN=0)),
        (Features.parse("causal,varlen"),
         dict(CUFLASH_MASK=1, CUFLASH_SOFTCAP=0, CUFLASH_ALIBI=0, CUFLASH_SINK=0, CUFLASH_DROPOUT=0,
              CUFLASH_BIAS=0, CUFLASH_VARLEN=1)),
    ],
)
def test_defines(features, defines):
    assert features.defines() == defines


def test_spec_defines_carry_the_features():
    f = Features.parse("window,alibi")
    d = FwdSpec.for_problem("bf16", 128, f).defines()
    assert d["CUFLASH_MASK"] == MASKS["local"] and d["CUFLASH_ALIBI"] == 1 and d["CUFLASH_SOFTCAP"] == 0
    assert d["CUFLASH_HEAD_DIM"] == 128 and d["CUFLASH_DTYPE"] == 1


def test_backward_specs_keep_the_sink_switch():
    # the backward's sink switch adds each CTA's exact part of dsink (softmax.cuh SinkDot)
    f = Features(sink=True)
    assert BwdSm90Spec("bf16", 128, f, False).defines()["CUFLASH_SINK"] == 1
    spec = BwdSpec.for_problem("bf16", 128, f)
    assert spec.features.sink and spec.name != BwdSpec.for_problem("bf16", 128).name


# ---------------------------------------------------------------- declared specs and names

WORDS = ("window", "softcap", "alibi", "sink")
FEATURE_SETS = {
    "default": support.DEFAULT_FEATURE_SETS,
    "singles": tuple(Features.parse(w) for w in WORDS),
    "pairs": tuple(Features.parse(",".join(p)) for p in combinations(WORDS, 2)),
    "everything": (PLAIN, CAUSAL, Features.parse("causal,softcap,alibi,sink"), Features.parse("window,softcap,alibi,sink")),
}


@pytest.mark.parametrize("key", sorted(FEATURE_SETS))
def test_declared_spec_names_are_unique(key):
    specs = support.declared_specs(FEATURE_SETS[key])
    names = [s.name for s in specs]
    assert names and len(names) == len(set(names))


def test_names_differ_by_features():
    a = FwdSpec.for_problem("bf16", 64, PLAIN).name
    b = FwdSpec.for_problem("bf16", 64, Features(softcap=True)).name
    c = FwdSpec.for_problem("bf16", 64, Features(alibi=True)).name
    assert len({a, b, c}) == 3


def test_plain_names_have_no_modifier_suffix():
    specs = support.declared_specs()
    attention = [s for s in specs if isinstance(s, AttentionSpec)]
    assert attention
    for spec in attention:
        assert not any(f"_{m}" in spec.name for m in MODIFIERS), spec.name
        assert "_local" not in spec.name, spec.name
        assert f"_{spec.features.tag}" in spec.name and spec.features.tag in ("full", "causal")


def test_default_declared_specs():
    specs = support.declared_specs()
    # 158 for the large-memory tiles (one Hopper forward tile per head dim since v8, and d64 causal's
    # second for short query lengths since v15), plus 8 built for one CTA per tile for long calls
    # (v21: d64 and d128 x 2 masks x 2 dtypes), plus 2 of d256 causal's short query lengths on the
    # persistent grid (v22: 2 dtypes), plus the
    # tiles of GPUs with less shared memory (2 dtypes x 2 masks: 2 forward and 9 backward tiles
    # in both modes; d224 runs d256's within 163 KB), plus sm_100's own backward tiles of d96, d160
    # and d256 (2 dtypes x 2 masks x 2 modes x 3 head dims; d256's adds dQ with bounds tests; its d128
    # and d192 ones are A100's), plus
    # the KV-cache append of each dtype; then the decode kernel (2 dtypes x 2 masks x (4 head dims
    # x 4 tiles + 4 x 2)), which merges its splits itself
    assert len(specs) == 158 + 8 + 2 + 4 * (2 + 2 * 9) + 2 * 2 * 2 * 3 + 2 + 2 * 2 * (4 * 4 + 4 * 2)
    features = {s.features for s in specs if isinstance(s, AttentionSpec)}
    assert features == {PLAIN, CAUSAL}
    assert support.declared_specs((PLAIN, CAUSAL)) == specs


def test_feature_specs_of_the_backward_carry_the_sink():
    specs = support.declared_specs((Features(sink=True),))
    mains = [s for s in specs if isinstance(s, (FwdSpec, FwdSm90Spec, BwdSpec, BwdSm90Spec))]
    assert any(isinstance(s, (BwdSpec, BwdSm90Spec)) for s in mains)
    assert all(s.features == Features(sink=True) for s in mains)


# ---------------------------------------------------------------- selection


def test_select_hopper_forward_on_sm90():
    spec = support.select(Problem("fwd", "bf16", 128, compute_capability=(9, 0)))
    assert isinstance(spec, FwdSm90Spec)
    assert spec.head_dim == 128 and spec.dtype == "bf16"


def test_hopper_forward_is_warp_specialised_with_its_producer_and_ring():
    spec = support.select(Problem("fwd", "bf16", 128, Features("local"), compute_capability=(9, 0)))
    assert spec.tiles.stages == 2 and spec.source == "fwd_sm90_ws.cu"
    assert spec.threads == 128 * (spec.tiles.block_m // 64 + 1)  # the consumers and one producer warpgroup
    assert spec.defines()["CUFLASH_STAGES"] == 2 and spec.name.endswith("s2")
    # Q, then `stages` slots of K and V, each V followed by a column block of ones (block_n rows of 128
    # bytes: the rows' sums from P V, sums_by_mma), the 1 KB alignment slack and 2 + 4 stages mbarriers
    t = spec.tiles
    assert not spec.persistent and spec.q_buffers == 1 and spec.defines()["CUFLASH_PERSISTENT"] == 0
    assert spec.sums_by_mma and spec.defines()["CUFLASH_SUMS_BY_MMA"] == 1
    ones = 2 * t.block_n * 128
    assert launch.fwd_smem_bytes(spec) == (t.block_m + 4 * t.block_n) * 128 * 2 + ones + 1024 + 8 * 10
    for spec in support.declared_specs():
        if isinstance(spec, FwdSm90Spec):
            assert launch.fwd_smem_bytes(spec) <= 227 * 1024, spec.name


def test_hopper_forward_walks_its_tiles_on_a_persistent_grid(monkeypatch):
    monkeypatch.setattr(launch, "sm_resources", lambda device: (132, 233472))
    plain = support.select(Problem("fwd", "bf16", 128, PLAIN, compute_capability=(9, 0)))
    assert plain.persistent and plain.q_buffers == 2 and plain.defines()["CUFLASH_PERSISTENT"] == 1
    t = plain.tiles
    # two Q buffers, so the next tile's Q loads while this one's last products run (and the ones after
    # each V slot: sums_by_mma)
    ones = 2 * t.block_n * 128
    assert launch.fwd_smem_bytes(plain) == (2 * t.block_m + 4 * t.block_n) * 128 * 2 + ones + 1024 + 8 * 12
    assert launch.fwd_grid(plain, 2, 16, 8192, 0) == (132, 1, 1)          # one CTA per SM
    assert launch.fwd_grid(plain, 1, 1, 256, 0) == (2, 1, 1)              # fewer tiles than SMs
    # causal: a head's tiles in pairs of equal work, one unit each
    causal = support.select(Problem("fwd", "bf16", 128, CAUSAL, compute_capability=(9, 0)))
    assert causal.persistent and causal.paired and not plain.paired and causal.q_buffers == 2
    assert launch.fwd_grid(causal, 2, 16, 8192, 0) == (132, 1, 1)
    assert launch.fwd_grid(causal, 1, 3, 640, 0) == (3 * 3, 1, 1)         # 5 blocks: 3 units per head
    local = support.select(Problem("fwd", "bf16", 128, Features("local"), compute_capability=(9, 0)))
    assert launch.fwd_grid(local, 2, 16, 8192, 0) == (2 * 16 * 64, 1, 1)  # one CTA per tile
    # a short band: the persistent grid, one unit per tile
    band = support.select(Problem("fwd", "bf16", 128, Features("local"), compute_capability=(9, 0), band=257))
    assert band.persistent and not band.paired and launch.fwd_grid(band, 2, 16, 8192, 0) == (132, 1, 1)
    # past FWD_SM90_PERSISTENT_ROWS query rows a dense call without a band takes the kernel built for
    # one CTA per tile (one Q buffer); a band and varlen keep theirs
    rows = specs.FWD_SM90_PERSISTENT_ROWS
    for mask in ("none", "causal"):
        f = Features(mask)
        assert support.fwd_spec("bf16", 128, f, (9, 0), seqlen_q=rows).persistent
        long = support.fwd_spec("bf16", 128, f, (9, 0), seqlen_q=rows + 1)
        assert long.long_rows and not long.persistent and long.q_buffers == 1 and long.name.endswith("l")
        assert launch.fwd_grid(long, 1, 16, 2 * rows, 0) == (2 * rows // 128 * 16, 1, 1)
        assert not support.fwd_spec("bf16", 128, Features(mask, varlen=True), (9, 0), seqlen_q=2 * rows).long_rows
    assert support.fwd_spec("bf16", 128, Features("local"), (9, 0), band=257, seqlen_q=2 * rows).short_band
    assert not support.fwd_spec("bf16", 256, PLAIN, (9, 0), seqlen_q=2 * rows).long_rows  # never persistent
    assert support.fwd_spec("bf16", 192, PLAIN, (9, 0), seqlen_q=2 * rows).persistent  # not measured
    with pytest.raises(ValueError, match="long_rows"):
        replace(band, long_rows=True)
    # work that differs per tile, and per-tile state that spilled the consumers beside the tile loop
    for features in (Features("local"), Features("local", varlen=True), Features(alibi=True), Features(dropout=True)):
        assert not support.select(Problem("fwd", "bf16", 128, features, compute_capability=(9, 0))).persistent
    # varlen: a list of the sequences' own tiles in shared memory, for batches that fit it
    for features in (Features(varlen=True), Features("causal", varlen=True)):
        spec = support.select(Problem("fwd", "bf16", 128, features, compute_capability=(9, 0)))
        seqs = spec.listed_seqs
        # the rows' sums from P V as the dense kernel takes them (the same bits for equal lengths), the
        # list as long as fits beside two Q buffers and the ones after each V slot
        assert spec.persistent and spec.sums_by_mma and causal.sums_by_mma and spec.q_buffers == 2
        assert seqs == 240 and spec.defines()["CUFLASH_LISTED_SEQS"] == seqs
        assert launch.fwd_smem_bytes(spec) == launch.fwd_smem_bytes(causal) + 8 * (seqs + 1) <= specs.SM90_SMEM_PER_BLOCK
        assert launch.fwd_smem_bytes(causal) + 8 * (seqs + 16 + 1) > specs.SM90_SMEM_PER_BLOCK
        # without the ones (d160), the whole list
        assert support.select(Problem("fwd", "bf16", 160, features, compute_capability=(9, 0))).listed_seqs \
            == specs.FWD_SM90_LISTED_SEQS
        rows = specs.FWD_SM90_LISTED_ROWS
        assert spec.defines()["CUFLASH_LISTED_ROWS"] == rows and spec.lists_tiles(seqs, rows)
        assert launch.fwd_grid(spec, seqs, 16, rows, 0) == (132, 1, 1)
        m_blocks = -(-rows // spec.tiles.block_m)
        # more sequences than the list holds, or a longer one: one CTA per tile
        assert launch.fwd_grid(spec, seqs + 1, 16, rows, 0) == ((seqs + 1) * 16 * m_blocks, 1, 1)
        m_blocks = -(-(rows + 1) // spec.tiles.block_m)
        assert launch.fwd_grid(spec, 4, 16, rows + 1, 0) == (4 * 16 * m_blocks, 1, 1)
    assert plain.listed_seqs == 0 and "CUFLASH_LISTED_SEQS" not in plain.defines()
    # causal on three consumer warpgroups (d64's 192-row tiles) since the element mask of two bounds per row
    d64 = support.select(Problem("fwd", "bf16", 64, CAUSAL, compute_capability=(9, 0)))
    assert d64.persistent and d64.paired and d64.tiles.block_m == 192
    for features in (PLAIN, CAUSAL):  # measured slower on a persistent grid from 2k on
        assert not support.select(Problem("fwd", "bf16", 96, features, compute_capability=(9, 0))).persistent
    assert not support.select(Problem("fwd", "bf16", 256, PLAIN, compute_capability=(9, 0))).persistent
    assert support.select(Problem("fwd", "bf16", 64, Features(softcap=True, sink=True),
                                  compute_capability=(9, 0))).persistent


@pytest.mark.parametrize("features, block_m, stages", [
    (Features(softcap=True), 192, 2),                     # three consumers take mask, softcap, varlen
    (Features("causal", varlen=True), 192, 2),
    (Features(alibi=True), 128, 2),                       # ALiBi, sink, dropout: two consumers
    (Features(sink=True), 128, 2),
    (Features("causal", dropout=1), 128, 2),
    (Features(bias=16), 128, 2),                          # a 16-bit bias: staged by the producer
    (Features("causal", bias=16, varlen=True), 128, 0),   # float32 or varlen: the kernel without a producer
    (Features("local", bias=32, dropout=1), 128, 0),
])
def test_hopper_forward_tiles_for_features_that_need_registers(features, block_m, stages):
    spec = support.select(Problem("fwd", "bf16", 64, features, compute_capability=(9, 0)))
    assert (spec.tiles.block_m, spec.tiles.stages) == (block_m, stages), spec.name
    assert spec.source == ("fwd_sm90_ws.cu" if stages else "fwd_sm90.cu")


def test_hopper_forward_stages_a_bias_in_whole_swizzle_atoms_within_shared_memory():
    # kernels_cu/common/bias_tile.cuh: key blocks of a multiple of 64, a ring of bias tiles beside K/V's
    for d in (32, 64, 96, 128, 160, 192, 224, 256):
        for mask in ("none", "causal"):
            spec = support.select(Problem("fwd", "bf16", d, Features(mask, bias=16), compute_capability=(9, 0)))
            t = spec.tiles
            assert t.stages and t.block_n % 64 == 0 and t.block_m == 128, spec.name
            assert launch.fwd_smem_bytes(spec) <= specs.SM90_SMEM_PER_BLOCK, spec.name
            plain = replace(spec, features=Features(mask))
            ones = t.stages * t.block_n * 128 if plain.sums_by_mma else 0  # the plain kernel's, not a bias's
            assert spec.ws_smem_bytes(1) == plain.ws_smem_bytes(1) - ones + t.stages * (t.block_m * t.block_n * 2 + 16)
            assert spec.persistent == (plain.persistent and spec.kv_rolled), spec.name
    with pytest.raises(ValueError, match="stages a dense 16-bit bias"):
        FwdSm90Spec("bf16", 128, Features(bias=16), FwdSm90Tiles(128, 80, stages=2))
    with pytest.raises(ValueError, match="stages a dense 16-bit bias"):
        FwdSm90Spec("bf16", 128, Features(bias=32), FwdSm90Tiles(128, 128, stages=2))


def test_the_hopper_forward_takes_the_row_sums_from_p_v_where_they_fit():
    # FwdSm90Spec.sums_by_mma: V followed by a column block of ones, P V with N = D + 8 (bench/NOTES.md v32)
    def fwd(d, features, **kw):
        return support.fwd_spec("bf16", d, features, (9, 0), **kw)
    for f in (PLAIN, CAUSAL, Features("local"), Features(softcap=True), Features("causal", sink=True, alibi=True),
              Features(varlen=True), Features("causal", varlen=True)):
        spec = fwd(128, f)
        assert spec.sums_by_mma and spec.defines()["CUFLASH_SUMS_BY_MMA"] == 1, spec.name
        dropped = replace(spec, features=replace(f, dropout=True))  # (varlen: the lists left out)
        assert spec.ws_smem_bytes(1, listed_seqs=0) == dropped.ws_smem_bytes(1, listed_seqs=0) \
            + spec.tiles.stages * spec.tiles.block_n * 128
    # not with dropout (l sums P before the drop) or a bias (no room at d128)
    for f in (Features(dropout=True), Features(bias=16), Features(dropout=True, varlen=True)):
        assert not fwd(128, f).sums_by_mma and fwd(128, f).defines()["CUFLASH_SUMS_BY_MMA"] == 0
    # not d64 (spills; where it fit, no gain) nor d256
    assert not fwd(64, Features(softcap=True), softcap=30.0).sums_by_mma
    assert not fwd(64, PLAIN).sums_by_mma and not fwd(256, PLAIN).sums_by_mma
    assert not getattr(support.fwd_spec("bf16", 128, PLAIN, (8, 0)), "sums_by_mma", False)  # portable


def test_the_hopper_forward_takes_a_share_of_its_exponentials_on_the_fma_pipe_at_a_fixed_offset():
    # FwdSm90Spec.exp2_fma_of_8 (bench/NOTES.md v33): a softcap's tanh and the exp2 share the SFU there
    def fwd(d, features, **kw):
        return support.fwd_spec("bf16", d, features, (9, 0), **kw)
    for d in (64, 128):
        for mask in ("none", "causal"):
            spec = fwd(d, Features(mask, softcap=True), softcap=30.0)
            assert spec.fixed_offset and spec.exp2_fma_of_8 == specs.FWD_SM90_EXP2_FMA_OF_8 > 0, spec.name
            assert spec.defines()["CUFLASH_EXP2_FMA_OF_8"] == spec.exp2_fma_of_8
            # not with a running max: a larger softcap, ALiBi beside it, or no softcap
            for other in (fwd(d, Features(mask, softcap=True), softcap=100.0),
                          fwd(d, Features(mask, softcap=True, alibi=True), softcap=30.0), fwd(d, Features(mask))):
                assert not other.fixed_offset and other.defines()["CUFLASH_EXP2_FMA_OF_8"] == 0, other.name
    # above FWD_SM90_EXP2_FMA_HEAD_DIM the products hide the SFU
    spec = fwd(256, Features(softcap=True), softcap=30.0)
    assert spec.fixed_offset and spec.defines()["CUFLASH_EXP2_FMA_OF_8"] == 0


def test_a_per_key_bias_takes_its_own_hopper_forward_where_the_kernel_stages_it():
    # FwdSm90Spec.bias_per_key: a bias of one row per (batch, head) (row stride 0) on a kernel of its own above
    # d = 64, which adds it with bias_tile.cuh add_row alone; selected from the call (api.run_forward). At d <= 64
    # the bias's one kernel branches between the adds at run time.
    for d in (32, 64):
        f = Features("causal", bias=16)
        assert support.fwd_spec("bf16", d, f, (9, 0), bias_per_key=True) == support.fwd_spec("bf16", d, f, (9, 0))
    for d in (96, 128, 256):
        for mask in ("none", "causal"):
            f = Features(mask, bias=16)
            key = support.fwd_spec("bf16", d, f, (9, 0), bias_per_key=True)
            dense = support.fwd_spec("bf16", d, f, (9, 0))
            assert key.bias_per_key and not dense.bias_per_key, key.name
            assert key == replace(dense, bias_per_key=True) and key.name == dense.name + "k"
            assert key.defines()["CUFLASH_BIAS_PER_KEY"] == 1 and dense.defines()["CUFLASH_BIAS_PER_KEY"] == 0
            assert key in support.declared_specs([f]) and dense in support.declared_specs([f])
    # a bias the kernel does not stage (float32), no bias, or the portable kernels: no per-key kernel
    assert not support.fwd_spec("bf16", 128, Features(bias=32), (9, 0), bias_per_key=True).bias_per_key
    assert not support.fwd_spec("bf16", 128, PLAIN, (9, 0), bias_per_key=True).bias_per_key
    assert not hasattr(support.fwd_spec("bf16", 128, Features(bias=16), (8, 0), bias_per_key=True), "bias_per_key")
    with pytest.raises(ValueError, match="bias_per_key"):
        FwdSm90Spec("bf16", 128, Features(bias=32), FwdSm90Tiles(128, 128), bias_per_key=True)
    with pytest.raises(ValueError, match="bias_per_key"):
        FwdSm90Spec("bf16", 64, Features(bias=16), FwdSm90Tiles(192, 128, stages=2), bias_per_key=True)


def test_hopper_backward_stages_a_bias_at_d64_only():
    # bwd_sm90_ws.cu stages a 16-bit dense bias without softcap at d = 64 (BwdSm90Spec.bias_stages); at d = 128
    # dbias's writes spill its lockstep consumers, and softcap's derivative reads the bias again: bwd_sm90.cu
    for mask in ("none", "causal"):
        for deterministic in (False, True):
            spec = support.select(Problem("bwd", "bf16", 64, Features(mask, bias=16), compute_capability=(9, 0),
                                          deterministic=deterministic))
            assert spec.source == "bwd_sm90_ws.cu" and spec.bias_stages == 2, spec.name
            assert spec.defines()["CUFLASH_BIAS_STAGES"] == 2
            assert launch.bwd_smem_bytes(spec) <= specs.SM90_SMEM_PER_BLOCK
            plain = replace(spec, features=Features(mask))
            assert launch.bwd_smem_bytes(spec) == launch.bwd_smem_bytes(plain) + 2 * (2 * 64 * 128 + 16)
            assert "CUFLASH_BIAS_STAGES" not in plain.defines() and plain.bias_stages == 0
    for d, features in ((128, Features(bias=16)), (64, Features(softcap=True, bias=16)), (64, Features(bias=32)),
                        (64, Features(bias=16, varlen=True))):
        spec = support.select(Problem("bwd", "bf16", d, features, compute_capability=(9, 0)))
        assert spec.source == "bwd_sm90.cu" and spec.bias_stages == 0, spec.name


@pytest.mark.parametrize("tiles", [FwdSm90Tiles(128, 128, stages=1), FwdSm90Tiles(128, 64, ctas_per_sm=2, stages=2),
                                   FwdSm90Tiles(256, 64, stages=2)])
def test_warp_specialised_tiles_are_refused_where_the_kernel_cannot_run_them(tiles):
    with pytest.raises(ValueError, match="warp-specialised"):
        FwdSm90Spec("bf16", 128, PLAIN, tiles)


def test_hopper_backward_is_warp_specialised_with_its_producer_and_ring():
    spec = support.select(Problem("bwd", "bf16", 128, CAUSAL, compute_capability=(9, 0)))
    assert isinstance(spec, BwdSm90Spec)
    assert spec.tiles.stages == 2 and spec.source == "bwd_sm90_ws.cu"
    assert spec.threads == 384  # two consumer warpgroups and the producer
    assert spec.defines()["CUFLASH_STAGES"] == 2 and spec.name.endswith("_s2")
    # K, V, two slots of Q and dO, two dS^T buffers, the fp32 dQ block (rows of 128 + 8 floats), L2
    # and D per slot, the dQ turn, 3 + 2 * 2 mbarriers and the 1 KB alignment slack
    assert spec.dq_accum_pad == 8
    assert launch.bwd_smem_bytes(spec) == (2 * (256 + 256) * 128 + 2 * 2 * 128 * 64 + 4 * 64 * (128 + 8)
                                           + 8 * 2 * 64 + 8 + 8 * 7 + 1024)
    for spec in support.declared_specs():
        if isinstance(spec, BwdSm90Spec):
            assert launch.bwd_smem_bytes(spec) <= 227 * 1024, spec.name


@pytest.mark.parametrize("head_dim, features, stages", [
    (64, PLAIN, 3), (64, Features("local", softcap=True, alibi=True, sink=True, varlen=True), 3),
    (64, Features("causal", dropout=1), 3), (128, PLAIN, 2),  # d64's consumers take turns (three slots)
    (128, Features("causal", dropout=1), 0),                  # dropout's Philox beside d128's accumulators
    (128, Features(bias=16), 0), (64, Features("causal", bias=32), 0),  # a bias: the kernel without a producer
    (256, PLAIN, 0),                                          # d = 256 splits dK/dV columns: bwd_sm90.cu
])
def test_hopper_backward_kernel_per_head_dim_and_features(head_dim, features, stages):
    spec = support.select(Problem("bwd", "bf16", head_dim, features, compute_capability=(9, 0)))
    assert isinstance(spec, BwdSm90Spec) and spec.tiles.stages == stages, spec.name
    assert spec.tiles.pingpong == (stages == 3), spec.name
    assert spec.source == ("bwd_sm90_ws.cu" if stages else "bwd_sm90.cu")
    assert spec.threads == (384 if stages else 256)


@pytest.mark.parametrize("cc, sm90", [((8, 0), True), ((8, 6), True), ((9, 0), False)])
def test_select_portable_forward(cc, sm90):
    spec = support.select(Problem("fwd", "fp16", 100, compute_capability=cc, sm90=sm90))
    assert type(spec) is FwdSpec
    assert spec.head_dim == 128  # 100 padded to the bucket


@pytest.mark.parametrize("window, narrow, persistent", [((255, 0), {64: True, 128: False}, {64: False, 128: True}),
                                                        ((100, 100), {64: True, 128: False}, {64: False, 128: True}),
                                                        ((511, 0), {64: True, 128: False}, {64: False, 128: True}),
                                                        ((512, 0), {64: False, 128: False}, {64: True, 128: True}),
                                                        ((1024, 0), {64: False, 128: False}, {64: True, 128: True}),
                                                        ((1024, 1), {64: False, 128: False}, {64: False, 128: False}),
                                                        ((-1, 100), {64: False, 128: False}, {64: False, 128: False}),
                                                        ((4096, 0), {64: False, 128: False}, {64: False, 128: False})])
def test_a_band_picks_the_hopper_tiles_and_grid(window, narrow, persistent):
    # at most specs.FWD_SM90_NARROW_BAND keys per query (512 at d64) takes the narrow tiles; else at
    # most FWD_SM90_PERSISTENT_BAND (1025) the warp-specialised kernel's persistent grid
    from cuflash import api

    local = Features.parse("window")
    for d in (64, 128):
        q = launch.Ref(0, (2, 4096, 8, d), (0, 0, 0, 1), "bfloat16", 0)
        opts = api.options(q, None, False, window, 0.0)
        spec = support.fwd_spec("bf16", d, opts.features, (9, 0), band=opts.band)
        usual = support.fwd_spec("bf16", d, local, (9, 0))
        assert not usual.persistent
        assert (spec.tiles.block_m, spec.tiles.block_n, spec.tiles.stages) == ((64, 64, 0) if narrow[d] else (
            usual.tiles.block_m, usual.tiles.block_n, usual.tiles.stages))
        assert spec.persistent == spec.short_band == persistent[d]
        assert (spec == usual) == (not narrow[d] and not persistent[d])
        assert spec.name in {s.name for s in support.declared_specs([local])}
    # only the local mask looks at the band
    assert support.fwd_spec("bf16", 128, CAUSAL, (9, 0), band=100) == support.fwd_spec("bf16", 128, CAUSAL, (9, 0))
    with pytest.raises(ValueError, match="short_band"):
        replace(support.fwd_spec("bf16", 128, CAUSAL, (9, 0)), short_band=True)


def test_short_causal_forwards_take_their_own_hopper_tiles():
    # specs.FWD_SM90_SHORT_CAUSAL: a d64 causal forward of at most 2048 query rows runs 128 x 128
    # tiles; longer ones, non-causal ones, other head dims and the portable kernels are unchanged
    long = support.fwd_spec("bf16", 64, CAUSAL, (9, 0))
    for rows in (1, 512, 2048):
        short = support.fwd_spec("bf16", 64, CAUSAL, (9, 0), seqlen_q=rows)
        assert (short.tiles.block_m, short.tiles.block_n) == (128, 128) != (long.tiles.block_m, long.tiles.block_n)
        assert short.name in {s.name for s in support.declared_specs([CAUSAL])}
    assert support.fwd_spec("bf16", 64, CAUSAL, (9, 0), seqlen_q=2049) == long
    assert support.fwd_spec("bf16", 64, PLAIN, (9, 0), seqlen_q=1024) == support.fwd_spec("bf16", 64, PLAIN, (9, 0))
    assert support.fwd_spec("bf16", 128, CAUSAL, (9, 0), seqlen_q=1024) == support.fwd_spec("bf16", 128, CAUSAL, (9, 0))
    assert (support.fwd_spec("bf16", 64, CAUSAL, (8, 0), seqlen_q=1024)
            == support.fwd_spec("bf16", 64, CAUSAL, (8, 0)))


def test_short_causal_d256_forwards_take_the_persistent_grid():
    # specs.FWD_SM90_SHORT_CAUSAL[256]: up to 4096 query rows, 128 x 64 tiles on the persistent grid
    # (FwdSm90Spec.short_causal, "p" in the name), dense and varlen; longer calls, and features that
    # keep the kernel off that grid (ALiBi, dropout), keep d256's tiles one CTA per tile
    long = support.fwd_spec("bf16", 256, CAUSAL, (9, 0))
    assert not long.persistent and not long.short_causal
    for f in (CAUSAL, Features.parse("causal,varlen"), Features.parse("causal,softcap,sink")):
        for rows in (1, 4096):
            short = support.fwd_spec("bf16", 256, f, (9, 0), seqlen_q=rows)
            assert short.short_causal and short.persistent and short.q_buffers == 1, short.name
            assert (short.tiles.block_m, short.tiles.block_n) == (128, 64) and short.name.endswith("p")
            assert short.name in {s.name for s in support.declared_specs([f])}
    assert support.fwd_spec("bf16", 256, CAUSAL, (9, 0), seqlen_q=4097) == long
    for f in ("causal,alibi", "causal,dropout"):
        f = Features.parse(f)
        assert support.fwd_spec("bf16", 256, f, (9, 0), seqlen_q=1024) == support.fwd_spec("bf16", 256, f, (9, 0))
    # the head dims already on the persistent grid keep their specs (d64's short tiles, d128's own)
    assert not support.fwd_spec("bf16", 64, CAUSAL, (9, 0), seqlen_q=1024).short_causal
    with pytest.raises(ValueError, match="short_causal"):
        replace(support.fwd_spec("bf16", 256, PLAIN, (9, 0)), short_causal=True)


def test_select_keeps_the_features():
    f = Features.parse("window,softcap,sink")
    fwd = support.select(Problem("fwd", "bf16", 64, f, compute_capability=(9, 0)))
    assert isinstance(fwd, FwdSm90Spec) and fwd.features == f
    bwd = support.select(Problem("bwd", "bf16", 64, f, compute_capability=(9, 0)))
    assert isinstance(bwd, BwdSm90Spec) and bwd.features == f
    assert support.bwd_spec("bf16", 64, f, False, (9, 0)).features == f


@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_select_hopper_backward_where_it_has_the_head_dim(head_dim):
    spec = support.select(Problem("bwd", "bf16", head_dim, compute_capability=(9, 0)))
    assert isinstance(spec, BwdSm90Spec)


@pytest.mark.parametrize("head_dim", [32, 80, 96, 160, 192, 224])
def test_select_portable_backward_for_head_dims_hopper_lacks(head_dim):
    problem = Problem("bwd", "bf16", head_dim, compute_capability=(9, 0))
    spec = support.select(problem)
    assert type(spec) is BwdSpec
    hopper = next(f for f in support.FAMILIES if f.name == "bwd_sm90")
    assert any("head dims" in r for r in support.family_reasons(hopper, problem))


def test_select_portable_backward_on_sm80():
    spec = support.select(Problem("bwd", "fp16", 128, compute_capability=(8, 0), deterministic=True))
    assert type(spec) is BwdSpec and spec.deterministic


def test_family_reasons():
    hopper_fwd = next(f for f in support.FAMILIES if f.name == "fwd_sm90")
    on_a100 = Problem("fwd", "bf16", 64, compute_capability=(8, 0))
    assert any("compute capability" in r for r in support.family_reasons(hopper_fwd, on_a100))
    disabled = Problem("fwd", "bf16", 64, compute_capability=(9, 0), sm90=False)
    assert any("disabled" in r for r in support.family_reasons(hopper_fwd, disabled))
    assert support.family_reasons(hopper_fwd, Problem("fwd", "bf16", 64)) == []
    assert any("fwd kernel" in r for r in support.family_reasons(hopper_fwd, Problem("bwd", "bf16", 64)))


def test_float32_runs_on_the_portable_kernels_only():
    for direction in ("fwd", "bwd"):
        spec = support.select(Problem(direction, "fp32", 64, compute_capability=(9, 0)))
        assert spec.dtype == "fp32" and not getattr(spec, "compute_capabilities", None)
    problem = Problem("decode", "fp32", 64, compute_capability=(9, 0))
    reasons = support.not_supported_reasons(problem)
    assert reasons and all("fp32" in r for r in reasons)
    with pytest.raises(ValueError, match=r"no cuflash kernel.*decode has dtypes"):
        support.select(problem)


def test_select_refuses_an_unknown_dtype_with_reasons():
    problem = Problem("fwd", "fp64", 64, compute_capability=(9, 0))
    reasons = support.not_supported_reasons(problem)
    assert reasons and all("fp64" in r for r in reasons)
    assert len(reasons) == len([f for f in support.FAMILIES if f.direction == "fwd"])


@pytest.mark.parametrize("cc", [(8, 0), (8, 6), (9, 0), (10, 0), (12, 0)])
@pytest.mark.parametrize("direction", ["fwd", "bwd"])
def test_float32_tiles_fit_each_gpu(cc, direction):
    """Every float32 head dim has a tile within the GPU's shared memory, except the backward's
    largest ones on GPUs with 99 KB (D >= 160) or A100's 163 KB (D >= 224): refused with the reason."""
    limit = support.SMEM_LIMITS[cc]
    for d in support.supported_head_dims():
        problem = Problem(direction, "fp32", d, compute_capability=cc, smem_limit=limit, sm90=False)
        reasons = support.not_supported_reasons(problem)
        bucket = -(-d // 32) * 32
        impossible = direction == "bwd" and (bucket >= 224 and limit < 200_000 or bucket >= 160 and limit < 110_000)
        if impossible:
            assert any("shared memory" in r for r in reasons), (d, reasons)
        else:
            assert not reasons, (d, reasons)
            assert support.smem_bytes(support.select(problem)) <= limit


def test_select_refuses_a_too_large_head_dim():
    with pytest.raises(ValueError, match="head dims"):
        support.select(Problem("bwd", "bf16", 288, compute_capability=(9, 0)))


@pytest.mark.parametrize(
    "problem",
    [
        Problem("fwd", "bf16", 128),
        Problem("fwd", "fp16", 8, Features.parse("window,softcap,alibi,sink"), compute_capability=(8, 0)),
        Problem("bwd", "bf16", 96, CAUSAL, deterministic=True),
        Problem("bwd", "fp16", 256, Features.parse("alibi"), compute_capability=(8, 6)),
    ],
)
def test_supported_problem_has_no_reasons(problem):
    assert support.not_supported_reasons(problem) == []
    assert support.select(problem) is not None


# ---------------------------------------------------------------- params


def test_pack_named_sets_named_fields_and_zeroes_the_rest():
    value = params.pack_named(params.FWD_PARAMS, {"q": 1234, "seqlen_q": 77, "scale": 0.5, "window_left": -1})
    assert value["q"] == 1234
    assert value["seqlen_q"] == 77
    assert value["scale"] == np.float32(0.5)
    assert value["window_left"] == -1
    named = {"q", "seqlen_q", "scale", "window_left"}
    for name in params.FWD_PARAMS.names:
        if name not in named:
            assert np.all(value[name] == 0), name  # tensor maps: 16 words
    assert value.dtype == params.FWD_PARAMS


def test_pack_named_refuses_an_unknown_field():
    with pytest.raises(KeyError, match="seqlenq"):
        params.pack_named(params.FWD_PARAMS, {"q": 1, "seqlenq": 3})
    with pytest.raises(KeyError, match="dout"):
        params.pack_named(params.FWD_PARAMS, {"dout": 1})  # a BwdParams field


def test_pack_named_matches_pack():
    names = params.BWD_PARAMS.names
    values = {name: i + 1 for i, name in enumerate(names)}
    assert params.pack_named(params.BWD_PARAMS, values).tobytes() == params.pack(
        params.BWD_PARAMS, tuple(values[n] for n in names)
    ).tobytes()


@pytest.mark.parametrize("struct", ["FwdParams", "BwdParams"])
def test_attention_params_start_with_the_shared_head(struct):
    dtype = params.STRUCTS[struct]
    head = [name for name, _ in params.ATTENTION_FIELDS]
    assert list(dtype.names[: len(head)]) == head
    for name, kind in params.ATTENTION_FIELDS:
        assert dtype.fields[name][0] == np.dtype(kind), name
    fwd, bwd = params.FWD_PARAMS, params.BWD_PARAMS
    assert all(fwd.fields[n][1] == bwd.fields[n][1] for n in head)  # same offsets in both structs


def test_varlen_is_a_feature_of_every_family():
    f = Features.parse("causal,varlen")
    assert f.varlen and f.tag == "causal_varlen"
    for cc in ((9, 0), (8, 0)):
        assert support.fwd_spec("bf16", 128, f, cc).features.varlen
        assert support.bwd_spec("bf16", 128, f, True, cc).features.varlen
    assert "varlen" in support.bwd_spec("bf16", 128, f, False, (9, 0)).name
    no_varlen = support.Family("x", support.FwdSpec, "fwd", None, (128,))
    assert "x has no variable-length batches" in support.family_reasons(
        no_varlen, support.Problem("fwd", "bf16", 128, f, (8, 0)))
    assert BwdPrepareSpec("bf16", True).name == "bwd_prepare_bf16_varlen"
    assert BwdPrepareSpec("bf16", True).defines()["CUFLASH_VARLEN"] == 1


@pytest.mark.parametrize("cc", sorted(support.SMEM_LIMITS))
def test_every_head_dim_gets_tiles_that_fit_the_gpu(cc):
    """Per compute capability, the selected portable kernel fits that GPU's shared memory per block
    (issue: every GPU from Ampere on); the only gap is the backward above d = 160 within 99 KB."""
    limit = support.SMEM_LIMITS[cc]
    for d in support.supported_head_dims():
        for det in (False, True):
            fwd = support.fwd_spec("bf16", d, CAUSAL, cc, sm90=False)
            assert support.smem_bytes(fwd) <= limit and fwd.head_dim >= d
            if limit < 166912 and d > 160:
                with pytest.raises(ValueError, match="no tiles for head dim"):
                    support.bwd_spec("bf16", d, CAUSAL, det, cc, sm90=False)
                continue
            bwd = support.bwd_spec("bf16", d, CAUSAL, det, cc, sm90=False)
            assert support.smem_bytes(bwd) <= limit and bwd.head_dim >= d, (cc, d, bwd.name)


def test_an_arch_class_list_replaces_the_default_tiles_there_only():
    """specs.ARCH_CLASS_TILES: on compute capability 10.x (B200) the portable backward takes its own
    lists (the 227 KB defaults spill under sm_100's ptxas); other GPUs keep theirs, and each list's
    kernels are declared, and built for that class's archs only."""
    assert 10 in ARCH_CLASS_TILES
    names = {s.name for s in support.declared_specs(dtypes=support.SUPPORTED_DTYPES)}
    for (direction, kind, d), tiles in ARCH_CLASS_TILES[10].items():
        for dtype in (("fp32",) if kind == "fp32" else ("bf16", "fp16")):
            problem = dict(dtype=dtype, head_dim=d, features=CAUSAL, sm90=False)
            b200 = support.select(Problem(direction, compute_capability=(10, 0), smem_limit=232448, **problem))
            h200 = support.select(Problem(direction, compute_capability=(9, 0), **problem))
            assert (b200.head_dim, b200.tiles) == tiles[0] and b200.tiles != h200.tiles, (dtype, d)
            assert b200.name in names
            assert cache.builds_for(b200, "sm_100") and cache.builds_for(b200, "sm_103")
            assert not cache.builds_for(h200, "sm_100") and cache.builds_for(h200, "sm_90")
            family = next(f for f in support.FAMILIES if f.name == direction)
            if b200 not in support.portable_candidates(family, dtype, d, CAUSAL):
                assert not cache.builds_for(b200, "sm_80") and not cache.builds_for(b200, "sm_90")


def test_loads_ahead_are_a_tile_choice_of_rolled_loops():
    """BwdTiles.k_ahead (mma.cuh warp_product AHEAD) is compiled in as CUFLASH_K_AHEAD and named in the
    kernel (suffix 'a'); it needs rolled k loops, so a fully unrolled tile that asks for it is refused."""
    d64 = BwdSpec.for_problem("bf16", 64)
    assert d64.tiles.k_ahead and d64.name.endswith("u2a") and d64.defines()["CUFLASH_K_AHEAD"] == 1
    d256 = BwdSpec.for_problem("bf16", 256)
    assert not d256.tiles.k_ahead and d256.name.endswith("u2") and d256.defines()["CUFLASH_K_AHEAD"] == 0
    with pytest.raises(ValueError, match="k_ahead .* needs k_unroll > 0"):
        replace(d64.tiles, k_unroll=0).check(64)


def test_declared_specs_hold_every_tile_any_gpu_selects():
    names = {s.name for s in support.declared_specs()}
    for cc in support.SMEM_LIMITS:
        for d in (64, 128, 192, 256):
            assert support.fwd_spec("fp16", d, PLAIN, cc, sm90=False).name in names
            if support.SMEM_LIMITS[cc] >= 166912 or d <= 160:
                assert support.bwd_spec("fp16", d, PLAIN, True, cc, sm90=False).name in names


def test_a_softcap_alone_folds_into_the_exp2_multiply_where_measured():
    # AttentionSpec.softcap_folded: the Hopper backward and the Hopper forward above d64 keep
    # tanh(softcap_in s) and take scale_log2 * softcap_out (= softcap log2(e)); the rest as before
    softcap, with_alibi = Features(softcap=True), Features(softcap=True, alibi=True)
    folded = {(d, dir_, f == softcap): support.select(Problem(dir_, "bf16", d, f, (9, 0))).softcap_folded
              for d in (64, 128) for dir_ in ("fwd", "bwd") for f in (softcap, with_alibi)}
    assert folded == {(64, "fwd", True): False, (128, "fwd", True): True, (64, "bwd", True): True,
                      (128, "bwd", True): True, (64, "fwd", False): False, (128, "fwd", False): False,
                      (64, "bwd", False): False, (128, "bwd", False): False}
    portable = support.select(Problem("fwd", "bf16", 128, softcap, (9, 0), sm90=False))
    assert not portable.softcap_folded and portable.defines()["CUFLASH_SOFTCAP_FOLDED"] == 0
    spec = support.select(Problem("fwd", "bf16", 128, softcap, (9, 0)))
    assert spec.defines()["CUFLASH_SOFTCAP_FOLDED"] == 1
    x = launch.Ref(1 << 20, (1, 8, 2, 128), (2048, 256, 128, 1), "bfloat16", 0)
    opts = {"scale": 0.125, "scale_log2": 0.125 * 1.4426950408889634, "softcap_in": 0.125 / 30, "softcap_out": 240.0}
    assert launch.attention_fields(spec, x, x, x, opts)["scale_log2"] == pytest.approx(30 * 1.4426950408889634)
    assert launch.attention_fields(portable, x, x, x, opts)["scale_log2"] == opts["scale_log2"]


def test_hopper_forward_tiles_fit_and_suit_their_kernel():
    """Every Hopper forward any feature set selects fits 227 KB and has key blocks its kernel takes:
    on the warp-specialised kernel a multiple of 32 or one of specs.WGMMA_EXTRA_N (wgmma.cuh's N
    lists), on the kernel without a producer a multiple of 32. From d160 on the tiles take
    80 or 96 keys, except beside ALiBi (it spilled there) and a bias (the kernel without a producer),
    which keep 64 (bench/NOTES.md v14)."""
    sets = ["causal", "window", "alibi", "bias", "dropout", "sink", "softcap", "varlen", "causal,alibi,sink",
            "window,softcap,alibi,sink,dropout"]
    for d in support.supported_head_dims():
        for f in [PLAIN] + [Features.parse(w) for w in sets]:
            spec = support.fwd_spec("bf16", d, f, (9, 0))
            t = spec.tiles
            assert support.smem_bytes(spec) <= support.SMEM_LIMITS[(9, 0)], spec.name
            assert t.block_n % (16 if t.stages else 32) == 0 and (t.stages or spec.source == "fwd_sm90.cu")
            if spec.head_dim in (160, 192, 256):
                assert t.block_n == (64 if f.alibi or f.bias else 96 if spec.head_dim == 160 else 80), spec.name
    with pytest.raises(ValueError, match="block_n"):
        FwdSm90Spec("bf16", 256, PLAIN, FwdSm90Tiles(128, 80))  # 80 keys need the warp-specialised kernel


def test_bounded_softcaps_take_the_fixed_offset():
    # specs.fixed_offset: a bf16 forward whose only score modifier is a softcap of at most ~51.3
    # (softcap * log2(e) <= FIXED_OFFSET_LOG2_MAX) runs its softmax at a fixed offset, with the
    # softcap folded into the exp2 multiply (the kernel's offset is computed from that multiply)
    capped = Features(softcap=True)
    for d in (64, 128, 256):
        for mask in ("none", "causal"):
            f = replace(capped, mask=mask)
            for softcap, fixed in ((5.0, True), (50.0, True), (51.2, True), (51.4, False), (0.0, False)):
                spec = support.fwd_spec("bf16", d, f, (9, 0), softcap=softcap)
                assert spec.fixed_offset == fixed, (d, mask, softcap)
                assert spec.name.endswith("f") == fixed
                if fixed:
                    assert spec.softcap_folded and spec.defines()["CUFLASH_SOFTMAX_FIXED"] == 1
                    assert spec.name in {s.name for s in support.declared_specs([f])}
                    assert replace(spec, fixed_offset=False).name != spec.name
            # fp16 P would lose the small terms; ALiBi and a bias keep the running max
            for cc in ((9, 0), (8, 0), (8, 6)):
                assert not support.fwd_spec("fp16", d, f, cc, softcap=30.0).fixed_offset
                assert not support.fwd_spec("bf16", d, replace(f, alibi=True), cc, softcap=30.0).fixed_offset
                assert not support.fwd_spec("bf16", d, replace(f, bias=16), cc, softcap=30.0).fixed_offset
            # the portable kernels too, on every arch class
            for cc in ((8, 0), (8, 6), (12, 0)):
                portable = support.fwd_spec("bf16", d, f, cc, softcap=30.0)
                assert portable.fixed_offset and portable.softcap_folded and portable.name.endswith("f")
                assert support.offered_on(portable, cc)
                assert portable.name in {s.name for s in support.declared_specs([f])}
                assert not support.fwd_spec("bf16", d, f, cc, softcap=60.0).softcap_folded
    # the sink and short causal calls keep it; dropout changes P before the row sums are taken from
    # it as packed (softmax.cuh pack_p), so it keeps the running max
    assert support.fwd_spec("bf16", 256, Features("causal", softcap=True, sink=True), (9, 0), seqlen_q=1000,
                            softcap=30.0).fixed_offset
    for cc in ((9, 0), (8, 0)):
        assert not support.fwd_spec("bf16", 128, Features(softcap=True, dropout=1), cc, softcap=30.0).fixed_offset
    # d64 keeps its unfolded softcap without it
    assert not support.fwd_spec("bf16", 64, capped, (9, 0), softcap=60.0).softcap_folded
    with pytest.raises(ValueError, match="fixed_offset"):
        replace(support.fwd_spec("fp16", 128, capped, (9, 0)), fixed_offset=True)
    with pytest.raises(ValueError, match="fixed_offset"):
        replace(support.fwd_spec("bf16", 128, PLAIN, (9, 0)), fixed_offset=True)
    with pytest.raises(ValueError, match="fixed_offset"):
        replace(support.fwd_spec("bf16", 128, Features(softcap=True, dropout=1), (9, 0)), fixed_offset=True)
