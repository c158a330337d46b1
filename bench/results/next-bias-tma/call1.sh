# Device call for bench/NOTES.md v29 (the bias tile by TMA, with an L2 prefetch BIAS_AHEAD blocks on).
# Before the call, on the CPU side (main's working tree):
#   git apply kernels_cu/dev/bias_tma.patch            # this tree: "new"
#   mkdir -p ab/old ab/ahead0
#   git archive HEAD kernels_cu | tar -x -C ab/old      # main's kernels: "old"
#   cp -r kernels_cu ab/ahead0/ && sed -i 's/^#define CUFLASH_BIAS_AHEAD 2$/#define CUFLASH_BIAS_AHEAD 0/' \
#     ab/ahead0/kernels_cu/fwd_sm90_ws.cu              # the TMA load without the prefetch: "ahead0"
# Then run this with OUT set (the device tool does); remove ab/ before committing.
set -x
export PYTHONPATH=. PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv > $OUT/gpu.txt
mkdir -p $OUT/t
# Correctness first: every bias test on the Hopper kernels (the portable ones do not change), in parallel groups.
export CUFLASH_CACHE_DIR=/tmp/kc-new
i=0
for g in "tests/gpu/test_bias.py" "tests/gpu/test_variants.py tests/gpu/test_dropout.py tests/gpu/test_torch.py tests/gpu/test_jax.py"; do
  timeout 300 python3 -m pytest $g -k "sm90 and bias" -q -rfE -p no:cacheprovider > $OUT/t/g$i.log 2>&1 &
  i=$((i+1))
done
SANITIZE_SECTIONS=bias timeout 200 compute-sanitizer --tool memcheck --error-exitcode 9 python3 bench/sanitize_case.py \
  > $OUT/t/memcheck.log 2>&1
SANITIZE_SECTIONS=bias timeout 200 compute-sanitizer --tool racecheck --error-exitcode 9 python3 bench/sanitize_case.py \
  > $OUT/t/racecheck.log 2>&1
wait
for f in $OUT/t/*.log; do echo "$f: $(tail -n 1 $f)"; done > $OUT/tests.txt
grep -h "^FAILED\|^ERROR\|ERROR SUMMARY\|RACECHECK SUMMARY" $OUT/t/*.log | head -30 >> $OUT/tests.txt
# Speed: three trees alternated, d128 8k bf16 (batch 2, 16 heads), full and broadcast biases, then the per-key one.
for shape in b,h,s,s 1,h,s,s b,1,1,s; do
  CUFLASH_CACHE_DIR=/tmp/kc-ab bash bench/ab_kernels.sh $OUT/ab-${shape//,/} ab/ahead0/kernels_cu,ab/old/kernels_cu 2 -- \
    --mode fwd --headdim 128 --seqlen 8k --causal both --bias $shape --peers sdpa-cudnn --no-check 2>&1 | tail -n 6 \
    > $OUT/ab-${shape//,/}.txt
done
cd $OUT && tar czf logs.tgz t ab-*/ && rm -rf t ab-*/
