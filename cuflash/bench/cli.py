"""`cuflash bench`: command-line options, and the run that ties the sweep to the reports.

Entry points:
  add_arguments(parser)  registers the options on an argparse (sub)parser;
  run(args) -> int        runs the benchmark for parsed options, returns the exit code;
  main(argv=None) -> int  both, for ``python -m cuflash.bench``.

Exit codes: 0 all good; 1 a correctness check failed (or cuflash cannot be
imported); 2 bad options or no GPU; 130 interrupted.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys

from . import configs, peers, report, timing


def _arg(parse):
    """Wrap a parser from configs so argparse prints its message."""
    def convert(text):
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    convert.__name__ = parse.__name__
    return convert


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"not an integer: {text!r}") from None
    if value < 1:
        raise ValueError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text):
    return 0 if text.strip() == "0" else _positive_int(text)


def _peers_for(feature):
    return f"Peers: {', '.join(peers.peers_supporting(feature)) or 'none'}."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("what to run (explicit options override --preset/--quick)")
    x = g.add_mutually_exclusive_group()
    x.add_argument("--preset", choices=sorted(configs.PRESETS),
                   help="standard: the anchors' sweep: bf16,fp16 x d 64,128,256 x seqlen 512..16k x causal both, "
                        "16k total tokens, hidden 2048, modes fwd,bwd")
    x.add_argument("--quick", action="store_true",
                   help="smoke run: bf16, d 64,128, seqlen 1k,4k, causal both, fwd and bwd")
    g.add_argument("--mode", type=_arg(lambda t: configs.parse_list(t, configs.parse_mode)),
                   help=f"comma list of {', '.join(configs.MODES)} (default fwd); decode runs alone, on its own "
                        "shapes (--cache, --page-size), and reports TB/s of K+V read")
    g.add_argument("--dtype", type=_arg(lambda t: configs.parse_list(t, configs.parse_dtype)),
                   help="comma list of bf16, fp16, fp32 (default bf16; fp32 against SDPA's efficient and math backends and flex)")
    g.add_argument("--headdim", type=_arg(lambda t: configs.parse_list(t, _positive_int)),
                   help="comma list of head dims (default 128)")
    g.add_argument("--seqlen", type=_arg(lambda t: configs.parse_list(t, configs.parse_size)),
                   help="comma list of sequence lengths, k = 1024 (e.g. 512,1k,8k; default 1k,2k,4k,8k)")
    g.add_argument("--causal", type=_arg(configs.parse_causal), help="true, false or both (default false)")
    b = g.add_mutually_exclusive_group()
    b.add_argument("--batch", type=_arg(_positive_int), help="fixed batch size")
    b.add_argument("--total-tokens", type=_arg(configs.parse_size),
                   help="batch = total tokens // seqlen, at least 1 (default 16k)")
    h = g.add_mutually_exclusive_group()
    h.add_argument("--nheads", type=_arg(_positive_int), help="fixed number of query heads")
    h.add_argument("--hidden", type=_arg(_positive_int), help="nheads = hidden // headdim (default 2048)")
    g.add_argument("--nheads-kv", type=_arg(_positive_int),
                   help="key/value heads for GQA; must divide nheads (default nheads)")
    g.add_argument("--peers", type=_arg(peers.parse_peers), default="auto",
                   help=f"auto (all installed), none, or a comma list of {', '.join(peers.PEER_NAMES)} "
                        "(default auto; flex compiles once per shape and mode, seconds each; a peer that times "
                        "none of the run's modes is left out: "
                        + "; ".join(f"{name} times {', '.join(m)}" for name, m in peers.PEER_MODES.items()) + ")")

    d = parser.add_argument_group(
        "decode (--mode decode: q (batch, 1, 32, 128) against full bf16 KV caches with 8 kv heads, "
        "cuflash.attention_with_kvcache; the peers read contiguous caches)")
    d.add_argument("--cache", type=_arg(lambda t: configs.parse_list(t, configs.parse_cache)), metavar="BxKEYS",
                   help="comma list of cache shapes batch x keys, k = 1024 (default "
                        + ",".join(f"{b}x{k // 1024}k" for b, k in configs.DECODE_CACHES) + "; --quick 8x8k,1x32k)")
    d.add_argument("--page-size", type=_arg(lambda t: configs.parse_list(t, configs.parse_page_size)),
                   metavar="N",
                   help="comma list of cache layouts: 0 = contiguous, N = paged, pages of N keys in a shuffled order "
                        "(default " + ",".join(str(n) for n in configs.DECODE_PAGE_SIZES) + "; --quick 0,16)")

    v = parser.add_argument_group(
        "attention variant (applies to every point and to the correctness check; a peer that cannot "
        "compute it is skipped with the reason)")
    v.add_argument("--window", type=_arg(configs.parse_window), default=(-1, -1), metavar="LEFT,RIGHT",
                   help="sliding window_size, bottom-right aligned, -1 = unbounded (causal makes RIGHT 0; "
                        "write --window=-1,0 when LEFT is -1); FLOPs count only the visible pairs. "
                        + _peers_for("window"))
    v.add_argument("--softcap", type=_arg(configs.parse_softcap), default=0.0, metavar="X",
                   help="score soft-capping X * tanh(s / X), X > 0. " + _peers_for("softcap"))
    v.add_argument("--alibi", action="store_true",
                   help="ALiBi with the geometric slopes 2^(-8 (h + 1) / nheads). " + _peers_for("alibi"))
    v.add_argument("--sink", action="store_true",
                   help="a learnable sink logit per head (random, fixed seed). " + _peers_for("sink"))
    v.add_argument("--bias", type=_arg(configs.parse_bias), default="", metavar="SHAPE",
                   help="an additive bias of this shape (b,h,s,s | 1,h,s,s | b,1,1,s ...; letters are full dims), "
                        "normal values in the input dtype, with dbias in the backward (the correctness check is "
                        "skipped: tests/gpu/test_bias.py checks it). " + _peers_for("bias"))
    v.add_argument("--dropout", type=_arg(configs.parse_dropout), default=0.0, metavar="P",
                   help="dropout on the probabilities with probability P (the correctness check is skipped: "
                        "tests/gpu/test_dropout.py checks the mask). " + _peers_for("dropout"))
    v.add_argument("--varlen", nargs="?", const="mix", default="", choices=configs.VARLEN_KINDS,
                   help="the batch's tokens as packed sequences of their own lengths (cuflash.attention_varlen; "
                        "FLOPs count no padding): mix (the default) = lengths drawn log-uniformly from 64 to seqlen "
                        "(fixed seed), steps = seqlen down to seqlen/4, equal = every one seqlen (the dense "
                        "batch's tokens). " + _peers_for("varlen"))

    t = parser.add_argument_group("timing and checking")
    t.add_argument("--warmup", type=_arg(_non_negative_int), default=10, help="warm-up calls per point (default 10)")
    t.add_argument("--rep", type=_arg(_positive_int), default=30, help="timed repetitions per point (default 30)")
    t.add_argument("--no-check", action="store_true",
                   help="skip the comparison of every cuflash row with cuflash.reference")

    o = parser.add_argument_group("output (the table always goes to stdout, progress to stderr)")
    o.add_argument("--csv", metavar="FILE", help="write one CSV line per row")
    o.add_argument("--json", metavar="FILE", help="write everything: environment, ceilings, every row and sample")
    o.add_argument("--plot", metavar="FILE.png", help="plot rate against seqlen (needs matplotlib)")
    o.add_argument("--no-progress", action="store_true", help="no per-point progress lines")
    o.add_argument("--from-json", nargs="+", metavar="FILE",
                   help="measure nothing: merge saved --json results (e.g. a sweep run in parts) and write "
                        "the table, --csv, --json and --plot from them; needs no GPU")


def build_sweep(args) -> configs.Sweep:
    """Defaults, then the preset (or --quick), then every option given explicitly."""
    base = dict(configs.DEFAULTS)
    if args.preset:
        base.update(configs.PRESETS[args.preset])
    elif args.quick:
        base.update(configs.QUICK)
    explicit = {"modes": args.mode, "dtypes": args.dtype, "headdims": args.headdim, "seqlens": args.seqlen,
                "causals": args.causal, "total_tokens": args.total_tokens, "hidden": args.hidden,
                "decode_caches": args.cache, "page_sizes": args.page_size}
    base.update({k: v for k, v in explicit.items() if v is not None})
    if "decode" in base["modes"]:
        given = [name for name in configs.NOT_FOR_DECODE if getattr(args, name) is not None]
        if given:
            raise ValueError(f"--{given[0].replace('_', '-')} shapes the fwd/bwd sweep; in decode mode give the "
                             "caches with --cache BATCHxKEYS,... (e.g. 64x8k,8x32k) and --page-size")
        if args.causal is None:
            base["causals"] = [False]     # a preset's causal rows mean nothing for one query
    else:
        for option, value in (("--cache", args.cache), ("--page-size", args.page_size)):
            if value is not None:
                raise ValueError(f"{option} applies to --mode decode only")
    return configs.Sweep(batch=args.batch, nheads=args.nheads, nheads_kv=args.nheads_kv, window=args.window,
                         softcap=args.softcap, alibi=args.alibi, sink=args.sink, varlen=args.varlen,
                         dropout=args.dropout, bias=args.bias, **base)


def _err(message: str) -> None:
    print(f"cuflash bench: {message}", file=sys.stderr)


def _log(message: str) -> None:
    print(message, file=sys.stderr)


def _memory_problem(points) -> str | None:
    """A point whose tensors (configs.device_bytes: inputs, outputs, gradients, a peer's copies)
    would not fit in 80% of the GPU's memory."""
    import cupy
    total = cupy.cuda.Device().mem_info[1]
    for p in points:
        need = configs.device_bytes(p)
        if need > 0.8 * total:
            lower = "--cache" if p.mode == "decode" else "--total-tokens, --batch, --hidden or --nheads"
            return (f"{p.label} needs about {need / 2**30:.1f} GiB of the GPU's {total / 2**30:.0f} GiB; "
                    f"lower {lower}")
    return None


def _output_problem(args) -> str | None:
    """Checked before measuring, so a long sweep does not end in an unwritable file."""
    for path in (args.csv, args.json, args.plot):
        if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            return f"the folder of {path} does not exist; create it first"
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        return "--plot needs matplotlib: pip install matplotlib, or drop --plot"
    return None


def run(args) -> int:
    problem = _output_problem(args)
    if problem:
        _err(problem)
        return 2

    if args.from_json:
        try:
            result = report.load(args.from_json)
        except (OSError, ValueError, KeyError, IndexError) as e:
            _err(f"cannot read --from-json files ({timing.one_line(e)}); give files written by --json")
            return 2
        return _write_outputs(args, result)

    try:
        points = build_sweep(args).points()
    except ValueError as e:
        _err(str(e))
        return 2
    problem = timing.gpu_problem()
    if problem:
        _err(f"no GPU: {problem}. Run it on a machine with an NVIDIA GPU (compute capability 8.0+) "
             "and a working driver; --help works anywhere.")
        return 2
    problem = _memory_problem(points)
    if problem:
        _err(problem)
        return 2
    try:
        import cuflash  # noqa: F401
    except Exception as e:
        _err(f"cannot import cuflash ({timing.one_line(e)}); run from the repository root or install it")
        return 1

    from . import runner
    result = runner.run_sweep(points, peer_names=args.peers, warmup=args.warmup, rep=args.rep,
                              check=not args.no_check, progress=not args.no_progress)
    return _write_outputs(args, result)


def _write_outputs(args, result) -> int:
    """Table to stdout, the files asked for, failures last; returns the exit code."""
    print(report.format_table(result))
    errors = report.format_errors(result)
    if errors:
        print("\n" + errors)
    if args.json:
        report.write_json(args.json, result)
        _log(f"wrote {args.json}")
    if args.csv:
        report.write_csv(args.csv, result)
        _log(f"wrote {args.csv}")
    if args.plot:
        try:
            report.write_plot(args.plot, result)
            _log(f"wrote {args.plot}")
        except Exception as e:   # the numbers are already saved; a plot problem must not hide them
            _err(f"could not write the plot {args.plot}: {timing.one_line(e)}")

    failed = report.format_failures(result)
    if failed:
        print("\n" + failed)
        _err(f"{len(report.failures(result))} correctness check(s) failed (listed at the end of the table)")
        return 1
    return 130 if result["meta"]["interrupted"] else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cuflash.bench",
        description="Time cuflash attention against the peers installed here (torch SDPA backends, "
                    "FlexAttention, JAX cuDNN; FlashInfer for decode) and against this GPU's matmul and "
                    "copy ceilings.")
    add_arguments(parser)
    return run(parser.parse_args(argv))
