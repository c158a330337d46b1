#!/usr/bin/env bash
# The GPU tests in parallel pytest processes on one GPU (the float64 NumPy references are
# CPU-bound, so several processes keep the GPU busier), logs under OUTDIR. Each process gets
# 2 BLAS threads: unbounded, five processes oversubscribed the H200 host's 16 cores and the
# whole run did not finish in 530 s (measured); five with 3 threads took 160-230 s per group
# apart from the variants group (below); seven with 2 use 14 of the 16 cores (nine, since test_variants
# runs in four parts, 18: measured 2026-12-04 with a 330 s limit, groups 2, 4, 5, 7, 8 took 224-308 s and
# groups 0, 1, 3, 6 were cut at 76-96%: the whole run needs ~420 s, within the default limit; groups 0, 3
# and 6 alone, three processes, took 179-285 s). Six such groups beside a sanitizer run took 73-245 s
# each, test_forward.py's the longest (2026-12-01).
#   bench/gpu_tests_parallel.sh OUTDIR [TIMEOUT_S] [PYTEST_ARGS...]
set -uo pipefail
out=${1:?usage: bench/gpu_tests_parallel.sh OUTDIR [TIMEOUT_S] [PYTEST_ARGS...]}
limit=${2:-540}
shift $(( $# >= 2 ? 2 : 1 ))
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONPATH=. PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
export OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 MKL_NUM_THREADS=2
export CUFLASH_CACHE_DIR=${CUFLASH_CACHE_DIR:-/tmp/cuflash-gpu-check-cache}
# test_variants.py runs in four parts, per kernel family (sm90 / portable: the ids of the conftest's
# family fixture), its large-shape tests and the rest: whole, with the dropout tests, it took over
# 455 s (2026-12-01); split into test_all_four and the rest, the rest's tail (long windows, short bands,
# d256 persistent causal, unseen keys) was cut by a 330 s limit at ~96% while the test_all_four parts
# took 74-84 s (2026-12-04); the other groups took 155-242 s.
large="all_four or long_window or short_band or short_causal or unseen"
groups=(
  "tests/gpu/test_forward.py tests/gpu/test_validation.py tests/gpu/test_launch_plans.py tests/gpu/test_reliability.py tests/gpu/test_cache.py"
  "tests/gpu/test_variants.py"
  "tests/gpu/test_variants.py"
  "tests/gpu/test_variants.py"
  "tests/gpu/test_variants.py"
  "tests/gpu/test_dropout.py tests/gpu/test_dropout_mask.py tests/gpu/test_merge.py tests/gpu/test_smaller_gpus.py"
  "tests/gpu/test_bias.py tests/gpu/test_varlen.py tests/gpu/test_packed.py"
  "tests/gpu/test_backward.py tests/gpu/test_float32.py"
  "tests/gpu/test_torch.py tests/gpu/test_jax.py tests/gpu/test_kvcache.py"
)
# The -k expression of each group ("" for none).
selects=(
  ""
  "sm90 and ($large)"
  "sm90 and not ($large)"
  "portable and ($large)"
  "portable and not ($large)"
  "" "" "" ""
)
# Compile the default kernels once, before the processes race for them.
python3 -m cuflash compile -j 8 > "$out/compile.log" 2>&1
pids=()
for i in "${!groups[@]}"; do
  # shellcheck disable=SC2086
  timeout "$limit" python3 -m pytest ${groups[$i]} ${selects[$i]:+-k "${selects[$i]}"} -q -rfE -p no:cacheprovider "$@" \
    --junitxml="$out/gpu-tests-$i.xml" > "$out/gpu-tests-$i.log" 2>&1 &
  pids+=($!)
done
rc=0
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" || rc=1
  echo "group $i (${groups[$i]}${selects[$i]:+ -k ${selects[$i]}}): $(tail -n 1 "$out/gpu-tests-$i.log")"
done
grep -h "^FAILED\|^ERROR" "$out"/gpu-tests-*.log | head -40
exit $rc
