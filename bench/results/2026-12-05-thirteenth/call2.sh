# Call 2: (a) v29 as landed (the bias tile by TMA) beside the plain forward in one run, d128 8k; (b) the d64
# biased backward (bwd_sm90_ws.cu reads the new tile layout) against the tree before v29 (ab/old).
set -x
export PYTHONPATH=. PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv > $OUT/gpu.txt
export CUFLASH_CACHE_DIR=/tmp/kc-new
mkdir -p $OUT/b
for bias in none b,h,s,s 1,h,s,s; do
  extra=""; [ $bias != none ] && extra="--bias $bias"
  timeout 40 python3 -m cuflash bench --mode fwd --headdim 128 --seqlen 8k --causal both --peers sdpa-cudnn --no-check \
    $extra --no-progress > $OUT/b/fwd-${bias//,/}.log 2>&1
done
grep -h " bf16 " $OUT/b/fwd-*.log > $OUT/bias-vs-plain.txt
CUFLASH_CACHE_DIR=/tmp/kc-ab timeout 90 bash bench/ab_kernels.sh $OUT/ab-bwd64 ab/old/kernels_cu 2 -- \
  --mode bwd --headdim 64 --seqlen 8k --causal both --bias b,h,s,s --peers none --no-check 2>&1 | tail -n 4 > $OUT/ab-bwd64.txt
cd $OUT && tar czf logs.tgz b ab-*/ && rm -rf b ab-*/
