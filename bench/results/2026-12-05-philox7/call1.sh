# Device call 1 (issue 10 Philox4x32-7; owed sanitizer; issue 15 d256 window+dropout tile, d192 k_unroll=2).
# Run from the repo root with OUT set; .kcache carried (kernels compiled under NVRTC 13.0 on the CPU side).
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 CUFLASH_CACHE_DIR=$PWD/.kcache OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 \
  MKL_NUM_THREADS=2 XLA_PYTHON_CLIENT_PREALLOCATE=false
R=bench/results/2026-12-05-philox7
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee $OUT/gpu.txt
T0=$(date +%s)
# 1. tests and the sanitizer side by side (correctness; no timing yet)
pt() { timeout 270 python3 -m pytest -q -p no:cacheprovider -rfE "$@"; }
(pt tests/gpu/test_dropout.py -k "fp16 or fp32" > $OUT/t1.log 2>&1; echo "rc=$?" >> $OUT/t1.log) &
(pt tests/gpu/test_dropout.py -k "not (fp16 or fp32)" > $OUT/t2.log 2>&1; echo "rc=$?" >> $OUT/t2.log) &
(pt tests/gpu/test_dropout_mask.py tests/gpu/test_backward.py tests/gpu/test_bias.py tests/gpu/test_float32.py \
   tests/gpu/test_torch.py tests/gpu/test_jax.py -k "dropout or mask" > $OUT/t3.log 2>&1; echo "rc=$?" >> $OUT/t3.log) &
(for fam in 0 1; do for tool in memcheck racecheck; do
   CUFLASH_DISABLE_SM90=$fam timeout 130 compute-sanitizer --tool $tool --error-exitcode 9 python3 $R/sanitize_dropout.py \
     > $OUT/san-$tool-$fam.log 2>&1; echo "$tool disable_sm90=$fam rc=$? $(grep -E '(ERROR|RACECHECK) SUMMARY|^done' $OUT/san-$tool-$fam.log | tail -2 | tr '\n' ' ')"
 done; done > $OUT/san.txt 2>&1) &
wait
echo "phase 1: $(( $(date +%s) - T0 )) s"; for f in t1 t2 t3; do echo "$f: $(tail -n 2 $OUT/$f.log | tr '\n' ' ')"; done; cat $OUT/san.txt
# 2. timing, one thing at a time
B="--headdim 64,128 --seqlen 8k --causal both --batch 2 --hidden 2048 --no-progress"
CUFLASH_CACHE_DIR=$PWD/.kcache/ab bash bench/ab_kernels.sh $OUT/ab ab/old/kernels_cu 2 -- --mode fwd,bwd $B --peers none --no-check --dropout 0.1 2>&1 | tail -9
CUFLASH_CACHE_DIR=$PWD/.kcache/ab-new timeout 90 python3 -m cuflash bench --mode fwd,bwd $B --peers none --json $OUT/plain.json > $OUT/plain.log 2>&1
CUFLASH_CACHE_DIR=$PWD/.kcache/ab-new timeout 120 python3 -m cuflash bench --mode fwd,bwd $B --peers sdpa-flash --no-check --dropout 0.1 --json $OUT/peer.json > $OUT/peer.log 2>&1
tail -n 12 $OUT/plain.log; tail -n 12 $OUT/peer.log
echo "phase 2a: $(( $(date +%s) - T0 )) s"
timeout 120 python3 bench/tune_bwd.py --headdim 192 --seqlen 2k,8k --tiles 64x64x8x2x2x2u2 > $OUT/tune192.log 2>&1; tail -n 16 $OUT/tune192.log
W="--mode fwd --headdim 256 --seqlen 16k --batch 1 --hidden 2048 --window 256,0 --dropout 0.1 --peers none --no-check --no-progress"
for r in 1 2; do
  timeout 40 python3 -m cuflash bench $W > $OUT/w256-new-$r.log 2>&1
  (cd ab/f3 && PYTHONPATH=. CUFLASH_KERNELS_DIR=$OLDPWD/kernels_cu timeout 40 python3 -m cuflash bench $W > $OUT/w256-old80-$r.log 2>&1)
done
grep -h -A3 "cuflash" $OUT/w256-*.log | tail -n 16
echo "total: $(( $(date +%s) - T0 )) s"
