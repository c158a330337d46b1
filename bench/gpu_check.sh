#!/usr/bin/env bash
# GPU check in one call (DESIGN §7): the GPU tests, compute-sanitizer on a
# small case, and a benchmark, with logs, JUnit XML and JSON under OUTDIR.
#
#   bench/gpu_check.sh OUTDIR [--tests PYTEST_ARGS] [--bench BENCH_ARGS] [--decode BENCH_ARGS]
#                             [--no-sanitizer] [--overhead] [--pack]
#
# --pack: the logs are written to a folder under /tmp and archived, after each stage, into
# OUTDIR/gpu-check.tgz, the one file in OUTDIR (the device tool returns at most 8 files from $OUT,
# so a call that writes more loses some; an archive kept up to date also survives a cut call).
#
# --decode (default "--quick"; "" skips it) runs `cuflash bench --mode decode` after the main
# benchmark, for the KV-cache kernels (TB/s beside SDPA).
# SANITIZER_TOOLS (default "memcheck racecheck synccheck initcheck") picks the
# compute-sanitizer tools; each runs bench/sanitize_case.py once per kernel family
# (SANITIZER_DISABLE_SM90="0 1": the GPU's own kernels, then the portable ones).
# Runs from the repo root with PYTHONPATH=. (nothing is installed). pytest is
# not stopped at the first failure, so one failure hides nothing. The last
# lines printed are a short summary table.
set -uo pipefail
out=${1:?usage: bench/gpu_check.sh OUTDIR [--tests ARGS] [--bench ARGS] [--no-sanitizer]}
shift
tests_args="tests/gpu"
bench_args="--quick"
decode_args="--quick"
sanitize=1
overhead=0
pack=0
while [ $# -gt 0 ]; do
  case "$1" in
    --tests) tests_args=$2; shift 2 ;;
    --bench) bench_args=$2; shift 2 ;;
    --decode) decode_args=$2; shift 2 ;;
    --no-sanitizer) sanitize=0; shift ;;
    --overhead) overhead=1; shift ;;
    --pack) pack=1; shift ;;
    *) echo "gpu_check: unknown option $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"
out=$(cd "$out" && pwd)
logs=$out
[ "$pack" = 1 ] && logs=$(mktemp -d /tmp/gpu-check.XXXXXX)
pack_logs() { [ "$pack" = 1 ] && tar -czf "$out/gpu-check.tgz" -C "$logs" . ; return 0; }
cd "$(dirname "$0")/.."
export PYTHONPATH=. PYTHONUNBUFFERED=1
export CUFLASH_CACHE_DIR=${CUFLASH_CACHE_DIR:-/tmp/cuflash-gpu-check-cache}

{ nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv; python3 -m cuflash info; } > "$logs/info.txt" 2>&1

# shellcheck disable=SC2086
python3 -m pytest $tests_args -q -rfE -p no:cacheprovider --junitxml="$logs/gpu-tests.xml" 2>&1 | tee "$logs/gpu-tests.log"
tests_rc=${PIPESTATUS[0]}
pack_logs

san_rc=0
if [ "$sanitize" = 1 ]; then
  # Once with the kernels the GPU picks (sm_90a ones on Hopper), once with the portable ones.
  for disable_sm90 in ${SANITIZER_DISABLE_SM90:-0 1}; do
    for tool in ${SANITIZER_TOOLS:-memcheck racecheck synccheck initcheck}; do
      log="$logs/sanitizer-$tool-$([ $disable_sm90 = 1 ] && echo portable || echo default).log"
      SANITIZER_TOOL=$tool CUFLASH_DISABLE_SM90=$disable_sm90 timeout 300 compute-sanitizer --tool "$tool" --error-exitcode 9 \
        python3 bench/sanitize_case.py > "$log" 2>&1
      rc=$?; [ $rc -ne 0 ] && san_rc=$rc
      pack_logs
      echo "sanitizer $tool (CUFLASH_DISABLE_SM90=$disable_sm90): rc=$rc; $(grep -E "(ERROR|RACECHECK) SUMMARY" "$log" | tail -n 1)"
    done
  done
fi

bench_rc=0
if [ -n "$bench_args" ]; then
  # shellcheck disable=SC2086
  python3 -m cuflash bench $bench_args --json "$logs/bench.json" 2>&1 | tee "$logs/bench.log"
  bench_rc=${PIPESTATUS[0]}
  pack_logs
fi

if [ -n "$decode_args" ]; then
  # shellcheck disable=SC2086
  python3 -m cuflash bench --mode decode $decode_args --json "$logs/bench-decode.json" 2>&1 | tee "$logs/bench-decode.log"
  rc=${PIPESTATUS[0]}; [ $rc -ne 0 ] && bench_rc=$rc
  pack_logs
fi

if [ "$overhead" = 1 ]; then
  # Host time per call at decode size (bench/overhead.py): CuPy, torch adapter, SDPA, JAX.
  XLA_PYTHON_CLIENT_PREALLOCATE=false python3 bench/overhead.py --json "$logs/overhead.json" 2>&1 | tee "$logs/overhead.log"
  pack_logs
fi

echo "== summary"
head -n 2 "$logs/info.txt"
tail -n 1 "$logs/gpu-tests.log"
echo "tests rc=$tests_rc sanitizer rc=$san_rc bench rc=$bench_rc"
[ $tests_rc -eq 0 ] && [ $san_rc -eq 0 ] && [ $bench_rc -eq 0 ]
