# Call 2: (a) v29 as landed (the bias tile by TMA, no prefetch) beside the plain forward in one run, d128 8k,
# every bias shape; (b) the d64 biased backward (bwd_sm90_ws.cu reads the new tile layout) against main;
# (c) issue 15: kernels_cu/dev/bwd_dq_red_v4.patch (ab/v4) against the working tree's portable backward.
set -x
export PYTHONPATH=. PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv > $OUT/gpu.txt
export CUFLASH_CACHE_DIR=/tmp/kc-new
mkdir -p $OUT/b
for bias in none b,h,s,s 1,h,s,s b,1,1,s; do
  extra=""; [ $bias != none ] && extra="--bias $bias"
  timeout 60 python3 -m cuflash bench --mode fwd --headdim 128 --seqlen 8k --causal both --peers sdpa-cudnn --no-check \
    $extra --no-progress > $OUT/b/fwd-${bias//,/}.log 2>&1
done
grep -h " bf16 " $OUT/b/fwd-*.log > $OUT/bias-vs-plain.txt
CUFLASH_CACHE_DIR=/tmp/kc-ab timeout 120 bash bench/ab_kernels.sh $OUT/ab-bwd64 ab/old/kernels_cu 2 -- \
  --mode bwd --headdim 64 --seqlen 8k --causal both --bias b,h,s,s --peers none --no-check 2>&1 | tail -n 4 > $OUT/ab-bwd64.txt
CUFLASH_DISABLE_SM90=1 CUFLASH_CACHE_DIR=/tmp/kc-ab timeout 330 bash bench/ab_kernels.sh $OUT/ab-v4 ab/v4/kernels_cu 2 -- \
  --mode bwd --headdim 64,128,256 --seqlen 2k,8k --causal both --peers sdpa-flash --no-check 2>&1 | tail -n 14 \
  > $OUT/ab-v4.txt
cd $OUT && tar czf logs.tgz b ab-*/ && rm -rf b ab-*/
