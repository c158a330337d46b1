"""cuflash bench: which peer computes which variant, and the FlexAttention masks and score mods.

The peers' skip rules need no torch.  The FlexAttention mods are checked
against cuflash.reference on the CPU when torch is installed (eager
flex_attention; skipped otherwise).
"""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy
import pytest

from cuflash import reference
from cuflash.bench import configs, peers


def point(causal=False, sq=64, sk=64, nheads=4, nheads_kv=4, mode="fwd", **variant):
    return configs.Point("bf16", 32, sq, sk, 2, nheads, nheads_kv, causal, mode, **variant)


SDPA_AND_JAX = ("sdpa-flash", "sdpa-cudnn", "sdpa-eff", "jax-cudnn")
FWD_PEERS = [name for name in peers.PEER_NAMES if "fwd" in peers.peer_modes(name) and name not in peers.VARLEN_ONLY]


@pytest.mark.parametrize("name", FWD_PEERS)
@pytest.mark.parametrize("causal", [False, True])
def test_every_peer_does_plain_and_causal(name, causal):
    assert peers.unsupported_reason(name, point(causal)) is None
    assert peers.unsupported_reason(name, point(causal, window=(-1, -1))) is None    # unbounded: plain


@pytest.mark.parametrize("variant, feature", [(dict(window=(256, 0)), "window"), (dict(window=(-1, 8)), "window"),
                                              (dict(softcap=30.0), "softcap"), (dict(alibi=True), "alibi"),
                                              (dict(sink=True), "sink")])
def test_variant_skips(variant, feature):
    p = point(**variant)
    for name in SDPA_AND_JAX:
        assert peers.unsupported_reason(name, p) == f"cannot compute {feature}"
    flex = peers.unsupported_reason("flex", p)
    assert flex == ("cannot compute sink" if feature == "sink" else None)


def test_reason_lists_every_missing_feature_in_order():
    p = point(True, window=(256, 0), softcap=30.0, alibi=True, sink=True)
    assert peers.unsupported_reason("sdpa-flash", p) == "cannot compute window, softcap, alibi, sink"
    assert peers.unsupported_reason("flex", p) == "cannot compute sink"


def test_peers_supporting():
    assert peers.peers_supporting("window") == ["flex"]
    assert peers.peers_supporting("softcap") == ["flex"]
    assert peers.peers_supporting("alibi") == ["flex"]
    assert peers.peers_supporting("sink") == []
    assert peers.peers_supporting("varlen") == ["flex", "cuflash-padded"]
    assert set(peers.PEER_FEATURES) <= set(peers.PEER_NAMES)
    for features in peers.PEER_FEATURES.values():
        assert set(features) <= set(configs.VARIANT_FEATURES)


def test_skip_rules_import_no_framework():
    # in a fresh interpreter: other tests of this session may have imported JAX already
    code = ("import sys; from cuflash.bench import configs, peers; "
            "p = configs.Point('bf16', 32, 64, 64, 2, 4, 4, False, 'fwd', window=(8, 0)); "
            "peers.unsupported_reason('flex', p); assert 'jax' not in sys.modules, 'jax imported'")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert run.returncode == 0, run.stderr
    if importlib.util.find_spec("torch") is None:
        # without torch, every torch peer is unavailable (a note, not an error)
        found, notes = peers.make_peers(["sdpa-flash", "flex"], timers=None)
        assert found == [] and all("torch is not installed" in n for n in notes) and len(notes) == 2


def test_the_padded_baseline_times_varlen_points_only():
    assert peers.unsupported_reason("cuflash-padded", point()) == "times varlen points only"
    for kind in configs.VARLEN_KINDS:
        assert peers.unsupported_reason("cuflash-padded", point(True, varlen=kind, window=(8, 0), sink=True)) is None
    assert peers.unsupported_reason("cuflash-padded", point(varlen="mix", bias="b,h,s,s")) == "cannot compute bias"
    assert peers.unsupported_reason("flex", point(True, varlen="mix", softcap=2.0)) is None
    assert peers.unsupported_reason("sdpa-flash", point(varlen="mix")) == "cannot compute varlen"


# --------------------------------------------------------------------------
# FlexAttention's mods against the reference (CPU, eager)
# --------------------------------------------------------------------------

FLEX_CASES = [
    dict(causal=True),
    dict(window=(8, 0)),
    dict(window=(5, 3)),
    dict(window=(-1, 4)),
    dict(causal=True, window=(6, 9)),          # causal makes right 0
    dict(softcap=0.7),
    dict(alibi=True),
    dict(causal=True, window=(16, 0), softcap=2.0, alibi=True),
    dict(sq=40, sk=72, window=(10, 2), alibi=True),      # bottom-right aligned, seqlen_q < seqlen_k
    dict(sq=72, sk=40, window=(10, 2), softcap=1.5),     # seqlen_q > seqlen_k: some rows see nothing
    dict(nheads=4, nheads_kv=2, window=(7, 0), alibi=True),
    dict(varlen="mix"),                                  # the document mask alone
    dict(causal=True, varlen="steps", alibi=True),       # causal and ALiBi inside each sequence
    dict(varlen="mix", window=(9, 3), softcap=1.5),
]


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("case", FLEX_CASES)
def test_flex_mods_match_the_reference(case):
    torch = pytest.importorskip("torch")
    flex_mod = pytest.importorskip("torch.nn.attention.flex_attention")
    p = point(**case)
    assert peers.unsupported_reason("flex", p) is None
    mask_mod, score_mod = peers.flex_mods(p, "cpu")
    assert (mask_mod is None) == (p.mask_window == (-1, -1) and not p.varlen)
    assert (score_mod is None) == (not p.softcap and not p.alibi)

    rng = numpy.random.default_rng(0)
    total_q, total_k = (sum(p.lengths),) * 2 if p.varlen else (p.seqlen_q, p.seqlen_k)
    q = rng.standard_normal((1, total_q, p.nheads, p.headdim))
    k = rng.standard_normal((1, total_k, p.nheads_kv, p.headdim))
    v = rng.standard_normal((1, total_k, p.nheads_kv, p.headdim))
    options = dict(causal=p.causal, window_size=p.window, softcap=p.softcap,
                   alibi_slopes=configs.alibi_slopes(p.nheads) if p.alibi else None)
    if p.varlen:     # the packed tokens, sequence by sequence
        assert len(p.lengths) > 1
        cu = numpy.concatenate([[0], numpy.cumsum(p.lengths)]).astype(numpy.int32)
        ref = reference.attention_forward_varlen(q[0], k[0], v[0], cu, cu, **options)[0][None]
    else:
        ref, _ = reference.attention_forward(q, k, v, **options)

    block_mask = None
    if mask_mod is not None:
        block_mask = flex_mod.create_block_mask(mask_mod, None, None, total_q, total_k, device="cpu")
    # (FlexAttention has no backward on the CPU; the GPU backward differentiates the same mods)
    t = [torch.tensor(x, dtype=torch.float32).transpose(1, 2) for x in (q, k, v)]
    out = flex_mod.flex_attention(*t, score_mod=score_mod, block_mask=block_mask,
                                  enable_gqa=p.nheads != p.nheads_kv).transpose(1, 2).numpy()
    # a row that sees no key: FlexAttention gives 0 (or NaN), cuflash and the reference give 0
    numpy.testing.assert_allclose(numpy.nan_to_num(out), ref, atol=2e-5)
