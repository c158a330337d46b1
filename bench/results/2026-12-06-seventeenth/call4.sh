# Seventeenth session, fourth device call. From the repo root: bash bench/results/2026-12-06-seventeenth/call4.sh
# NOTES v30 again: the per-key bias's add_row in its own instance of the consumers' tile body (no branch in the
# key-block loop) at d64 and d128, against HEAD (add_row behind a run-time branch at d64 only, d128 add);
# per-key and full biases, bf16 8k, causal and not, forward, two alternated rounds; test_bias.py Hopper with it.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
R=/tmp/r; mkdir -p $R
pack() { tar -czf $OUT/r.tgz -C $R . ; }
nvidia-smi --query-gpu=name --format=csv,noheader > $R/gpu.txt
args="--mode fwd --headdim 64,128 --seqlen 8k --causal both --peers none --no-check"
timeout 200 bash bench/ab_kernels.sh $R/ab-key ab/head/kernels_cu 2 -- $args --bias b,1,1,s > $R/ab-key.log 2>&1
pack
timeout 150 bash bench/ab_kernels.sh $R/ab-full ab/head/kernels_cu 2 -- $args --bias b,h,s,s > $R/ab-full.log 2>&1
pack
OMP_NUM_THREADS=8 CUFLASH_CACHE_DIR=/tmp/cc-t1 timeout 150 python3 -m pytest tests/gpu/test_bias.py -k "not portable" -q -rfE \
  -p no:cacheprovider > $R/bias-tests.log 2>&1
pack
tail -n 9 $R/ab-key.log; tail -n 9 $R/ab-full.log; tail -n 2 $R/bias-tests.log
