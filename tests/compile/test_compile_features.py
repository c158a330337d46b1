"""The feature kernels (window, softcap, alibi, sink, dropout and their combinations)
compile with NVRTC for sm_80 and sm_90a, no GPU needed.

Like test_compile_specs.py: the specs go through cache.compile_many once per
module (in parallel processes) into a private cache folder, and each (spec,
arch) is then one test. To keep the module to minutes, only bf16 at the
compile-time head dims 64 and 128 is built (fp16 differs only in the element
type); the prepare/convert helpers have no features and are left out.

Some variant kernels spill a few bytes; that is recorded, not failed, here
(test_spill_summary lists them). The plain and causal kernels, which must not
spill, are test_compile_specs.py's.
"""
from __future__ import annotations

import warnings
from itertools import combinations

import pytest

from cuflash import support
from cuflash.compile import cache
from cuflash.specs import CAUSAL, PLAIN, AttentionSpec, Features

ARCHS = ("sm_80", "sm_90a")
DTYPE = "bf16"
HEAD_DIMS = (64, 128)
WORDS = ("window", "softcap", "alibi", "sink", "dropout")
FEATURE_SETS = (
    [Features.parse(w) for w in WORDS]
    + [Features.parse(",".join(pair)) for pair in combinations(WORDS, 2)]
    + [Features.parse("causal,softcap,alibi,sink,dropout"), Features.parse("window,softcap,alibi,sink,dropout")]
    # the bias, in the input dtype and float32, alone and with the others
    + [Features.parse("bias"), Features.parse("causal,bias32"), Features.parse("window,softcap,alibi,sink,bias"),
       Features.parse("causal,dropout,bias")]
    # dropout whose seed is in device memory (cuflash.jax)
    + [Features.parse("causal,dropoutmem")]
    # variable-length batches
    + [Features.parse("varlen"), Features.parse("causal,varlen"), Features.parse("window,softcap,alibi,sink,varlen"),
       Features.parse("causal,dropout,varlen")]
)


def _specs():
    by_name = {}
    for spec in support.declared_specs(FEATURE_SETS):
        if isinstance(spec, AttentionSpec) and spec.dtype == DTYPE and spec.head_dim in HEAD_DIMS:
            by_name.setdefault(spec.name, spec)
    return list(by_name.values())


SPECS = _specs()
PAIRS = [(spec, arch) for spec in SPECS for arch in ARCHS if cache.builds_for(spec, arch)]


@pytest.fixture(scope="module")
def outcomes(compile_all):
    """(spec name, requested arch) -> Outcome for every feature spec and arch, compiled for real (force)."""
    by_key = compile_all(SPECS, ARCHS)
    print(f"\ncompiled {len(by_key)} feature kernels ({len(SPECS)} specs x {ARCHS} where they build)")
    return by_key


def test_the_grid_covers_every_feature():
    assert len({s.name for s in SPECS}) == len(SPECS)
    features = {s.features for s in SPECS}
    for f in FEATURE_SETS:
        assert f in features, f.tag
    assert {s.head_dim for s in SPECS} == set(HEAD_DIMS)
    assert {s.dtype for s in SPECS} == {DTYPE}
    assert {type(s).__name__ for s in SPECS} == {"FwdSpec", "FwdSm90Spec", "BwdSpec", "BwdSm90Spec", "DecodeSpec"}
    # the backward keeps the sink switch (each CTA's exact part of dsink)
    assert any(s.features.sink for s in SPECS if s.entry.startswith("cuflash_bwd"))
    assert any(s.features.dropout for s in SPECS if s.entry.startswith("cuflash_bwd"))
    assert not any(s.features.dropout for s in SPECS if s.entry == "cuflash_decode")
    assert PAIRS


@pytest.mark.parametrize("spec,arch", PAIRS, ids=[f"{s.name}-{a}" for s, a in PAIRS])
def test_feature_spec_compiles(outcomes, spec, arch):
    outcome = outcomes[(spec.name, arch)]
    assert outcome.error is None, outcome.error
    result = outcome.result
    assert not result.cached
    assert result.reported
    assert 0 < result.registers <= 255
    assert not result.wgmma_serialized, f"ptxas serialised the wgmma products of {spec.name} (bench/NOTES.md b5)"
    assert result.arch == cache.target_arch(spec, cache.parse_arch(arch))


def test_spill_summary(outcomes):
    """Lists the (spec, arch) pairs that spill (allowed here)."""
    assert len(outcomes) == len(PAIRS), f"compiled {len(outcomes)} of {len(PAIRS)}"
    spilling = sorted(
        (o.spec.name, o.arch, o.result.arch, o.result.spill_stores, o.result.spill_loads)
        for o in outcomes.values()
        if o.result is not None and o.result.spills
    )
    lines = [
        f"{name} {arch}{'' if built == arch else f' (built as {built})'}: {stores} bytes stored, {loads} loaded"
        for name, arch, built, stores, loads in spilling
    ]
    summary = f"compiled {len(outcomes)} feature kernels; {len(spilling)} spill" + "".join(f"\n  {line}" for line in lines)
    print("\n" + summary)
    if spilling:
        warnings.warn(summary, UserWarning, stacklevel=1)
    assert not any(f in (PLAIN, CAUSAL) for f in {s.features for s in SPECS}), "plain/causal: test_compile_specs.py"


def test_the_d256_windowed_dropout_forward_does_not_spill(compile_all):
    """At d256 a window beside dropout takes 64-key blocks (FwdSm90Tiles.with_features): with
    80 the Philox rounds and the window's bounds spilled 96 bytes under every NVRTC."""
    spec = next(s for s in support.declared_specs([Features.parse("window,dropout")])
                if s.name.startswith("fwd90_bf16_d256_"))
    outcome = compile_all([spec], ("sm_90a",))[(spec.name, "sm_90a")]
    assert outcome.error is None, outcome.error
    assert not outcome.result.spills, f"{spec.name}: {outcome.result.spill_stores} bytes stored"
