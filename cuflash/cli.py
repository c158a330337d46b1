"""The ``cuflash`` command: ``cuflash compile | info | bench``."""
from __future__ import annotations

import argparse
import os
import sys
import time

from .compile import env

EPILOG = "Environment variables: " + ", ".join(v.name for v in env.ENV_VARS) + " (see `cuflash info`)."


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    with_bench = _subcommand(argv) == "bench"
    parser = build_parser(with_bench=with_bench)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    env.configure_logging()
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _subcommand(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(with_bench: bool = False) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cuflash",
        description="FlashAttention kernels compiled at run time by NVRTC and cached on disk.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"cuflash {cuflash_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "compile",
        help="compile kernels ahead of time (no GPU needed) and fill the disk cache",
        description=(
            "Compile every kernel specialisation cuflash declares (cuflash.support.declared_specs) for the "
            "given GPU archs, without a GPU, in parallel processes; write the cubins to the disk cache; print "
            "registers, spills and shared memory. Exits non-zero on a compile error, on register spills in "
            "a kernel that forbids them, or on wgmma products that ptxas serialised (status SERIAL)."
        ),
        epilog=EPILOG,
    )
    p.add_argument(
        "--arch",
        help="comma-separated GPU archs, e.g. sm_80,sm_90a (default: the visible GPU's, else %s). Each kernel "
        "is built for the exact target the runtime uses on such a GPU: a portable kernel for an sm_90a GPU is "
        "built as sm_90, an sm_90a-only kernel as sm_90a." % ",".join(_support().COMPILE_ARCHS),
    )
    p.add_argument("--only", action="append", metavar="SUBSTRING",
                   help="only specs whose name contains SUBSTRING (repeatable: any match)")
    p.add_argument(
        "--features", action="append", metavar="LIST",
        help="compile the kernels of this feature set instead of the default plain and causal ones: a comma "
        "list of causal | window | softcap | alibi | sink | varlen, e.g. --features window,softcap (repeatable: one set "
        "each; an empty string is the plain set)",
    )
    p.add_argument("--dtypes", metavar="LIST",
                   help="comma list of input dtypes to build, of fp16, bf16, fp32 (default: fp16,bf16; float32 "
                   "kernels otherwise compile on first use)")
    p.add_argument("-j", "--jobs", type=int, default=None, help="parallel processes (default: one per CPU)")
    p.add_argument("--force", action="store_true", help="compile even when the cubin is already cached")
    p.add_argument("--list", action="store_true", help="list the selected specs and exit")
    p.set_defaults(run=cmd_compile)

    p = sub.add_parser("info", help="GPU, CUDA, NVRTC, CuPy and cuflash versions, paths and settings, and the "
                       "kernels each head dim runs on the GPU", epilog=EPILOG)
    p.add_argument("--arch", default=None,
                   help="show the kernels of a GPU of this arch instead of the visible one's, e.g. sm_80 or sm_100 "
                        "(no GPU needed)")
    p.set_defaults(run=cmd_info)

    p = sub.add_parser("bench", help="benchmark cuflash against the attention kernels installed beside it",
                       add_help=with_bench)
    if with_bench:
        bench_cli = _bench_cli()
        bench_cli.add_arguments(p)
        p.set_defaults(run=bench_cli.run)
    else:
        p.set_defaults(run=lambda args: 2)
    return parser


def _support():
    from . import support

    return support


def _bench_cli():
    import importlib

    try:
        return importlib.import_module("cuflash.bench.cli")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("cuflash"):
            sys.exit(
                f"cuflash bench is not available: the module {exc.name} is missing from this installation "
                f"({os.path.dirname(__file__)}). Reinstall cuflash: pip install -e '.[cuda12,bench]'."
            )
        sys.exit(f"cuflash bench needs the package {exc.name!r}: pip install '{exc.name}' (or the bench extra).")


def cuflash_version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("cuflash")
    except PackageNotFoundError:
        pass
    try:
        import cuflash

        return f"{cuflash.__version__} (source checkout)"
    except Exception as exc:  # a broken package should not break `cuflash info`
        return f"unknown ({type(exc).__name__}: {exc})"


# ---------------------------------------------------------------- compile


def cmd_compile(args) -> int:
    from .compile import cache

    support = _support()
    dtypes = support.DEFAULT_DTYPES
    if args.dtypes is not None:
        dtypes = tuple(d.strip() for d in args.dtypes.split(",") if d.strip())
        unknown = [d for d in dtypes if d not in support.SUPPORTED_DTYPES]
        if unknown or not dtypes:
            print(f"--dtypes: expected a comma list of {', '.join(support.SUPPORTED_DTYPES)}, got {args.dtypes!r}",
                  file=sys.stderr)
            return 2
    feature_sets = support.DEFAULT_FEATURE_SETS
    if args.features is not None:
        from .specs import Features

        try:
            feature_sets = [Features.parse(text) for text in args.features]
        except ValueError as e:
            print(f"--features: {e}", file=sys.stderr)
            return 2
    specs = support.declared_specs(feature_sets, dtypes)
    if args.only:
        specs = [s for s in specs if any(sub in s.name for sub in args.only)]
        if not specs:
            print(f"no spec name contains {' or '.join(map(repr, args.only))}; `cuflash compile --list` "
                  "shows them all", file=sys.stderr)
            return 2
    if args.arch:
        archs = [a.strip() for a in args.arch.split(",") if a.strip()]
    else:
        gpu = _visible_gpu_arch()
        archs = [gpu] if gpu else list(support.COMPILE_ARCHS)
    try:
        for arch in archs:
            cache.parse_arch(arch)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.list:  # the specs that build for at least one of the archs (cache.builds_for)
        for spec in specs:
            if any(cache.builds_for(spec, a) for a in archs):
                print(spec.name)
        return 0
    from .compile import nvrtc

    try:
        nvrtc.nvrtc_version()  # once here, not once per kernel
    except nvrtc.CompileError as exc:
        print(f"cuflash compile: {exc}", file=sys.stderr)
        return 2
    pairs = [(s, a) for s in specs for a in archs if cache.builds_for(s, a)]
    total = len(pairs)
    jobs = max(1, min(args.jobs or cache.cpu_count(), total or 1))
    where = env.cache_dir() if env.disk_cache_enabled() else "nowhere (CUFLASH_DISABLE_DISK_CACHE=1)"
    print(f"compiling {len(specs)} specs for {','.join(archs)} = {total} kernels "
          f"with {jobs} processes; cubins go to {where}", file=sys.stderr)
    start = time.perf_counter()
    outcomes = []
    progress = _Progress(total)
    for outcome in cache.compile_many(specs, archs, jobs=jobs, force=args.force):
        outcomes.append(outcome)
        progress.update(f"{_status(outcome):<6} {outcome.spec.name} {outcome.arch}", important=not outcome.ok)
    progress.close()
    order = {(s.name, a): i for i, (s, a) in enumerate(pairs)}
    outcomes.sort(key=lambda o: order[(o.spec.name, o.arch)])
    print(_table(outcomes))
    failed = [o for o in outcomes if not o.ok]
    version = nvrtc.nvrtc_version()
    old_nvrtc = bool(cache.nvrtc_upgrade(version))  # then a serialised kernel is the compiler's, not the kernel's
    for o in failed:
        if o.error:
            print(f"\nERROR {o.spec.name} for {o.arch}:\n{o.error}", file=sys.stderr)
        elif o.spills_forbidden:
            r = o.result
            print(f"\nSPILLS {o.spec.name} for {r.arch}: {r.spill_stores} bytes stored, {r.spill_loads} loaded; "
                  "the spec forbids spills (allow_spills=False): shrink its tiles or registers", file=sys.stderr)
        elif old_nvrtc:
            print(f"\nSERIAL {o.spec.name} for {o.result.arch}: {cache.serialized_advice(version)}", file=sys.stderr)
        else:
            print(f"\nSERIAL {o.spec.name} for {o.result.arch}: ptxas serialised its wgmma products (a register "
                  "operand of a product defined while it may run; bench/NOTES.md b5, s5): it runs, about a third "
                  "slower; move that definition out of the product's wait", file=sys.stderr)
    summary = f"{len(outcomes) - len(failed)}/{total} ok in {_elapsed(start)}"
    print(summary + (f"; {len(failed)} failed" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


class _Progress:
    """On a terminal, one line rewritten in place per finished kernel; piped, a line per tenth
    of the work (and the last one). Failures always keep their own line."""

    def __init__(self, total: int):
        self.total, self.done, self.start = total, 0, time.perf_counter()
        self.tty = sys.stderr.isatty()
        self.step = max(1, -(-total // 10))

    def update(self, text: str, important: bool = False) -> None:
        self.done += 1
        line = f"[{self.done:>{len(str(self.total))}}/{self.total}] {_elapsed(self.start):>7}  {text}"
        if self.tty:
            sys.stderr.write("\r\033[K" + line + ("\n" if important else ""))
        elif important or self.done % self.step == 0 or self.done == self.total:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def _status(o) -> str:
    if o.error:
        return "ERROR"
    if o.spills_forbidden:
        return "SPILLS"
    if o.serialized:
        return "SERIAL"
    return "cached" if o.result.cached else "ok"


def _elapsed(start: float) -> str:
    return f"{time.perf_counter() - start:.1f} s"


def _table(outcomes) -> str:
    """regs, spills, shared memory (static from ptxas plus the dynamic bytes its launches use:
    cuflash.launch.dynamic_smem_bytes), compile seconds, status."""
    from .launch import dynamic_smem_bytes

    header = ("spec", "arch", "regs", "spill st/ld B", "smem B", "seconds", "status")
    rows = []
    for o in outcomes:
        r = o.result
        if r is None:
            rows.append((o.spec.name, o.arch, "-", "-", "-", "-", _status(o)))
        else:
            seconds = f"{r.seconds:.2f}"
            rows.append((o.spec.name, r.arch, str(r.registers), f"{r.spill_stores}/{r.spill_loads}",
                         str(r.shared_bytes + dynamic_smem_bytes(o.spec)), seconds, _status(o)))
    return _columns(header, rows)


def _columns(header: tuple, rows: list) -> str:
    """header and rows of strings as left-aligned columns, a rule under the header."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _visible_gpu_arch() -> str | None:
    """sm_XY of GPU 0, or None without a GPU."""
    gpu = _gpu_info()
    if gpu is None:
        return None
    major, minor = gpu["cc"]
    return f"sm_{major}{minor}"


def _gpu_info() -> dict | None:
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
        props = cupy.cuda.runtime.getDeviceProperties(0)
        name = props["name"]
        return {
            "name": name.decode() if isinstance(name, bytes) else str(name),
            "cc": (props["major"], props["minor"]),
            "count": cupy.cuda.runtime.getDeviceCount(),
        }
    except Exception:
        return None


# ---------------------------------------------------------------- info


def _tma_summary() -> str:
    """Whether the Hopper forward and backward can load with TMA here (cuflash/tma.py)."""
    from . import tma

    if not tma.available():
        return "no driver with a tensor-map encoder (CUDA 12 or newer): the Hopper kernels load with cp.async"
    if not env.tma_enabled():
        return "off (CUFLASH_TMA=0): the Hopper kernels load with cp.async"
    return "the driver's encoder: the Hopper forward (dense and varlen) and backward (dense) load with TMA"


def cmd_info(args) -> int:
    rows: list[tuple[str, str]] = []
    gpu = _gpu_info()
    if gpu:
        major, minor = gpu["cc"]
        rows.append(("GPU", f"{gpu['name']} (compute capability {major}.{minor}; {gpu['count']} visible)"))
    else:
        from .gpu import why_no_gpu

        rows.append(("GPU", why_no_gpu() or "no GPU visible"))
    rows.append(("CUDA driver", _try(lambda: _cuda_version(_cupy().cuda.runtime.driverGetVersion()))))
    rows.append(("CUDA runtime", _try(lambda: _cuda_version(_cupy().cuda.runtime.runtimeGetVersion()))))
    rows.append(("NVRTC", _try(lambda: _nvrtc_summary(nvrtc_version()))))
    rows.append(("CuPy", _try(lambda: _cupy().__version__)))
    rows.append(("TMA tensor maps", _tma_summary()))
    rows.append(("cuflash", cuflash_version()))
    rows.append(("kernels dir", _try(lambda: str(env.kernels_dir()))))
    rows.append(("cache dir", _cache_summary()))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    print("\nenvironment variables:")
    width = max(len(v.name) for v in env.ENV_VARS)
    for var, value in env.current_values():
        shown = repr(value) if value is not None else f"(unset; default {var.default.replace('`', '')})"
        print(f"  {var.name:<{width}}  {shown}")
    arch = getattr(args, "arch", None)
    if arch is None and gpu:
        arch = "sm_%d%d" % gpu["cc"]
    if arch is not None:
        from .compile import cache

        try:
            cc = cache.parse_arch(arch)
        except ValueError as exc:
            print(exc, file=sys.stderr)
            return 2
        print()
        print(_kernels_table(cc, arch))
    return 0


def _kernels_table(cc: tuple[int, int], arch: str) -> str:
    """The forward and backward kernel (spec name: family, dtype, head dim, tiles) and its dynamic
    shared memory, per head dim bucket, of a plain call in bf16 and in float32 on a GPU of compute
    capability cc, as selection picks them (support.select, with CUFLASH_DISABLE_SM90 and
    CUFLASH_SMEM_LIMIT as set)."""
    from . import support
    from .launch import dynamic_smem_bytes

    limit = env.smem_limit_override() or support.SMEM_LIMITS.get(cc, support.SMEM_LIMIT_MIN)
    sm90 = env.sm90_enabled()

    def cell(direction, dtype, d):
        try:
            spec = support.select(support.Problem(direction, dtype, d, compute_capability=cc, sm90=sm90,
                                                  smem_limit=limit))
        except ValueError:
            return "none (shared memory)", "-"
        return spec.name, str(dynamic_smem_bytes(spec))

    header = ("d", "forward bf16", "smem B", "backward bf16", "smem B", "forward fp32", "smem B",
              "backward fp32", "smem B")
    rows = [(str(d), *cell("fwd", "bf16", d), *cell("bwd", "bf16", d), *cell("fwd", "fp32", d),
             *cell("bwd", "fp32", d))
            for d in range(32, support.HEAD_DIM_MAX + 1, 32)]
    title = (f"kernels on {arch} (compute capability {cc[0]}.{cc[1]}, {limit} bytes of shared memory per block; "
             f"a plain call, each head dim up to d):")
    return title + "\n" + _columns(header, rows)


def _cupy():
    import cupy

    return cupy


def nvrtc_version() -> tuple[int, int]:
    from .compile.nvrtc import nvrtc_version

    return nvrtc_version()


def _nvrtc_summary(version) -> str:
    """The NVRTC version, and what to install where it serialises Hopper kernels (compile.cache.nvrtc_upgrade)."""
    from .compile.cache import NVRTC_FOR_WGMMA, nvrtc_upgrade

    upgrade = nvrtc_upgrade(version)
    text = "%d.%d" % tuple(version)
    if upgrade:
        text += " (older than %d.%d: some Hopper kernels compile with serialised wgmma and run slowly; %s)" % (
            *NVRTC_FOR_WGMMA, upgrade)
    return text


def _try(fn) -> str:
    try:
        return str(fn())
    except Exception as exc:
        return f"unavailable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"


def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{v % 1000 // 10}" if v else "none (no NVIDIA driver found)"


def _cache_summary() -> str:
    path = env.cache_dir()
    state = "" if env.disk_cache_enabled() else " (disabled by CUFLASH_DISABLE_DISK_CACHE)"
    if not path.is_dir():
        return f"{path} (empty){state}"
    files = [p for p in path.iterdir() if p.is_file()]
    cubins = sum(1 for p in files if p.suffix == ".cubin")
    size = sum(p.stat().st_size for p in files)
    return f"{path} ({cubins} kernels, {len(files)} files, {size / 2**20:.1f} MiB){state}"


if __name__ == "__main__":
    sys.exit(main())
