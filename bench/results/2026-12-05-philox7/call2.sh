# Device call 2 (issue 10): the forward's dropout applied to the packed P (drop_packed), A/B against
# 7 rounds alone (ab/mid) on Hopper, and against HEAD (10 rounds) on the portable kernels; tests; d256 window.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 CUFLASH_CACHE_DIR=$PWD/.kcache OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 \
  MKL_NUM_THREADS=2 XLA_PYTHON_CLIENT_PREALLOCATE=false
R=bench/results/2026-12-05-philox7
L=$OUT/logs; mkdir -p $L
nvidia-smi --query-gpu=name --format=csv,noheader
T0=$(date +%s)
pt() { timeout 200 python3 -m pytest -q -p no:cacheprovider -rfE "$@"; }
(pt tests/gpu/test_dropout.py -k "fp16 or fp32" > $L/t1.log 2>&1; echo "rc=$?" >> $L/t1.log) &
(pt tests/gpu/test_dropout.py -k "not (fp16 or fp32)" > $L/t2.log 2>&1; echo "rc=$?" >> $L/t2.log) &
(pt tests/gpu/test_dropout_mask.py tests/gpu/test_bias.py tests/gpu/test_torch.py tests/gpu/test_jax.py -k "dropout or mask" > $L/t3.log 2>&1; echo "rc=$?" >> $L/t3.log) &
(for fam in 0 1; do CUFLASH_DISABLE_SM90=$fam timeout 100 compute-sanitizer --tool memcheck --error-exitcode 9 python3 $R/sanitize_dropout.py \
   > $L/san-$fam.log 2>&1; echo "memcheck disable_sm90=$fam rc=$? $(grep -E 'ERROR SUMMARY|^done' $L/san-$fam.log | tail -2 | tr '\n' ' ')"; done > $L/san.txt 2>&1) &
wait
echo "phase 1: $(( $(date +%s) - T0 )) s"; for f in t1 t2 t3; do echo "$f: $(tail -n 2 $L/$f.log | tr '\n' ' ')"; done; cat $L/san.txt
grep -h -E "^(FAILED|ERROR)" $L/t*.log | head -10
B="--mode fwd --headdim 64,128 --seqlen 8k --causal both --batch 2 --hidden 2048 --no-progress --peers none"
echo "== Hopper forward: packed (new) vs 7 rounds alone (old = ab/mid)"
CUFLASH_CACHE_DIR=$PWD/.kcache/abm bash bench/ab_kernels.sh $L/abm ab/mid/kernels_cu 2 -- $B --no-check --dropout 0.1 2>&1 | tail -5
echo "== portable forward: packed + 7 rounds (new) vs HEAD (old, 10 rounds)"
CUFLASH_DISABLE_SM90=1 CUFLASH_CACHE_DIR=$PWD/.kcache/ab bash bench/ab_kernels.sh $L/abp ab/old/kernels_cu 2 -- $B --no-check --dropout 0.1 2>&1 | tail -5
echo "== portable plain"
CUFLASH_DISABLE_SM90=1 CUFLASH_CACHE_DIR=$PWD/.kcache/ab-new timeout 60 python3 -m cuflash bench $B > $L/plainp.log 2>&1; grep -E "^ bf16" $L/plainp.log
echo "== d256 window (256,0) + dropout forward, 16k: 64-key (new) / 80-key (f3fd178's specs) blocks"
W="--mode fwd --headdim 256 --seqlen 16k --batch 1 --hidden 2048 --window 256,0 --dropout 0.1 --peers none --no-check --no-progress"
for r in 1 2; do
  timeout 40 python3 -m cuflash bench $W 2>&1 | grep -E "^ bf16" | sed 's/^/new /'
  (cd ab/f3 && PYTHONPATH=. CUFLASH_KERNELS_DIR=$OLDPWD/kernels_cu timeout 40 python3 -m cuflash bench $W 2>&1 | grep -E "^ bf16" | sed 's/^/80k /')
done
cd $OUT && tar czf logs.tgz logs && rm -rf logs
echo "total: $(( $(date +%s) - T0 )) s"
