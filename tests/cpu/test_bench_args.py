"""cuflash bench: option parsing and the grids that presets and options expand to."""
import argparse

import pytest

from cuflash.bench import cli, configs, peers


def parse(*argv):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def points(*argv):
    return cli.build_sweep(parse(*argv)).points()


@pytest.mark.parametrize("text, value", [("512", 512), ("1k", 1024), ("8K", 8192), ("16k", 16384),
                                         (" 3 ", 3), ("1m", 1 << 20)])
def test_parse_size(text, value):
    assert configs.parse_size(text) == value


@pytest.mark.parametrize("text", ["abc", "1.5k", "-1", "0", "k", ""])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError):
        configs.parse_size(text)


def test_seqlen_list_with_suffixes():
    assert parse("--seqlen", "512,1k,8k").seqlen == [512, 1024, 8192]


def test_bad_option_values_exit_2(capsys):
    for argv in (["--seqlen", "1x"], ["--dtype", "fp8"], ["--mode", "prefill"], ["--causal", "maybe"],
                 ["--peers", "sdpa-flash,nope"], ["--headdim", "0"]):
        with pytest.raises(SystemExit) as e:
            parse(*argv)
        assert e.value.code == 2
    assert "unknown peer 'nope'" in capsys.readouterr().err


def test_defaults():
    pts = points()
    assert {p.dtype for p in pts} == {"bf16"}
    assert {p.mode for p in pts} == {"fwd"}
    assert {p.causal for p in pts} == {False}
    assert [p.seqlen_q for p in pts] == [1024, 2048, 4096, 8192]
    # 16k tokens, hidden 2048, d 128
    assert [(p.batch, p.nheads, p.nheads_kv) for p in pts] == [(16, 16, 16), (8, 16, 16), (4, 16, 16),
                                                                (2, 16, 16)]


def test_standard_preset_is_the_anchor_grid():
    pts = points("--preset", "standard")
    assert len(pts) == 2 * 3 * 6 * 2 * 2
    assert {p.dtype for p in pts} == {"bf16", "fp16"}
    assert {p.headdim for p in pts} == {64, 128, 256}
    assert sorted({p.seqlen_q for p in pts}) == [512, 1024, 2048, 4096, 8192, 16384]
    assert {p.causal for p in pts} == {False, True}
    assert {p.mode for p in pts} == {"fwd", "bwd"}
    for p in pts:
        assert p.batch * p.seqlen_q == 16384
        assert p.nheads * p.headdim == 2048
        assert p.seqlen_k == p.seqlen_q and p.nheads_kv == p.nheads
    # the anchors' first point: d 64, s 512 -> b 32, h 32
    assert (pts[0].dtype, pts[0].headdim, pts[0].seqlen_q, pts[0].batch, pts[0].nheads) == ("bf16", 64, 512, 32, 32)
    # modes innermost, so consecutive points share inputs
    assert pts[0].shape_key() == pts[1].shape_key() and pts[0].mode != pts[1].mode


def test_explicit_options_override_the_preset():
    pts = points("--preset", "standard", "--dtype", "bf16", "--headdim", "128", "--mode", "fwd")
    assert len(pts) == 6 * 2
    assert {(p.dtype, p.headdim, p.mode) for p in pts} == {("bf16", 128, "fwd")}


def test_quick_is_small_and_covers_fwd_bwd_causal():
    pts = points("--quick")
    assert 4 <= len(pts) <= 20
    assert {p.mode for p in pts} == {"fwd", "bwd"}
    assert {p.causal for p in pts} == {False, True}


def test_preset_and_quick_are_exclusive():
    with pytest.raises(SystemExit):
        parse("--preset", "standard", "--quick")


def test_total_tokens_to_batch():
    pts = points("--seqlen", "1k,4k,32k", "--total-tokens", "8k")
    assert [p.batch for p in pts] == [8, 2, 1]     # at least one sequence


def test_fixed_batch():
    assert {p.batch for p in points("--seqlen", "1k,4k", "--batch", "3")} == {3}
    with pytest.raises(SystemExit):
        parse("--batch", "2", "--total-tokens", "4096")


def test_hidden_to_nheads():
    pts = points("--headdim", "64,128,256", "--hidden", "4096")
    assert {p.headdim: p.nheads for p in pts} == {64: 64, 128: 32, 256: 16}


def test_hidden_not_divisible_is_an_error():
    with pytest.raises(ValueError, match="not a multiple of head dim 96"):
        points("--headdim", "96", "--hidden", "2048")


def test_fixed_nheads_and_gqa():
    pts = points("--headdim", "64,128", "--nheads", "32", "--nheads-kv", "8")
    assert {(p.nheads, p.nheads_kv) for p in pts} == {(32, 8)}
    with pytest.raises(ValueError, match="does not divide"):
        points("--nheads", "32", "--nheads-kv", "5")


def test_causal_choices():
    assert {p.causal for p in points("--causal", "both")} == {False, True}
    assert {p.causal for p in points("--causal", "true")} == {True}
    assert {p.causal for p in points("--causal", "false")} == {False}
    assert len(points("--causal", "both")) == 2 * len(points("--causal", "false"))


def test_modes_and_dtype_aliases():
    pts = points("--mode", "fwd,bwd,fwd+bwd", "--dtype", "bfloat16,half", "--seqlen", "1k")
    assert [p.mode for p in pts] == ["fwd", "bwd", "fwd+bwd"] * 2
    assert [p.dtype for p in pts] == ["bf16"] * 3 + ["fp16"] * 3


def test_peers_option():
    assert parse().peers == list(peers.PEER_NAMES)          # auto
    assert parse("--peers", "none").peers == []
    assert parse("--peers", "sdpa-cudnn, flex,sdpa-cudnn").peers == ["sdpa-cudnn", "flex"]


def test_label():
    p = configs.Point("bf16", 128, 8192, 8192, 2, 16, 4, True, "fwd")
    assert p.label == "bf16 d128 s8192 b2 h16/4 causal fwd"


def test_variant_defaults_to_plain():
    args = parse()
    assert (args.window, args.softcap, args.alibi, args.sink) == ((-1, -1), 0.0, False, False)
    for p in points():
        assert p.features == frozenset() and p.variant == "" and "window" not in p.label


def test_variant_options_reach_every_point():
    pts = points("--seqlen", "8k,16k", "--causal", "both", "--mode", "fwd,bwd", "--window", "256,0",
                 "--softcap", "30", "--alibi", "--sink")
    assert len(pts) == 8
    for p in pts:
        assert (p.window, p.softcap, p.alibi, p.sink) == ((256, 0), 30.0, True, True)
        assert p.features == {"window", "softcap", "alibi", "sink"}
        assert p.variant == "window(256,0)+softcap30+alibi+sink"
        assert p.variant in p.label
    one = points("--softcap", "2.5", "--seqlen", "1k")[0]
    assert one.features == {"softcap"} and one.variant == "softcap2.5"
    assert one.label == "bf16 d128 s1024 b16 full softcap2.5 fwd"


@pytest.mark.parametrize("text, value", [("256,0", (256, 0)), (" 128 , 64 ", (128, 64)), ("-1,0", (-1, 0)),
                                         ("0,-1", (0, -1)), ("-1,-1", (-1, -1))])
def test_parse_window(text, value):
    assert configs.parse_window(text) == value
    assert parse(f"--window={text}").window == value      # '=' lets argparse take a value starting with '-'
    if not text.startswith("-"):
        assert parse("--window", text).window == value


def test_unbounded_window_is_plain_and_causal_makes_right_0():
    assert points("--window=-1,-1")[0].features == frozenset()
    p = points("--window", "256,8", "--causal", "true")[0]
    assert p.window == (256, 8) and p.mask_window == (256, 0)
    assert points("--window", "256,8")[0].mask_window == (256, 8)


@pytest.mark.parametrize("argv, message", [
    (["--window", "256"], "--window takes LEFT,RIGHT"),
    (["--window", "1,2,3"], "--window takes LEFT,RIGHT"),
    (["--window", "a,0"], "--window takes LEFT,RIGHT"),
    (["--window", "1.5,0"], "--window takes LEFT,RIGHT"),
    (["--window=-2,0"], "must be >= -1"),
    (["--window", "0,-5"], "must be >= -1"),
    (["--softcap", "0"], "finite number > 0"),
    (["--softcap", "-30"], "finite number > 0"),
    (["--softcap", "inf"], "finite number > 0"),
    (["--softcap", "nan"], "finite number > 0"),
    (["--softcap", "big"], "--softcap takes a number"),
])
def test_bad_variant_values_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        parse(*argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "argument --" in err


def test_variant_switches_take_no_value():
    with pytest.raises(SystemExit):
        parse("--alibi", "yes")


def test_help_names_the_peers_of_each_variant():
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    text = " ".join(parser.format_help().split())
    for option in ("--window LEFT,RIGHT", "--softcap X", "--alibi", "--sink"):
        assert option in text
    assert text.count("Peers: flex.") == 3 and "Peers: none." in text
