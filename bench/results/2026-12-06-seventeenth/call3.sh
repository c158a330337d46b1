# Seventeenth session, third device call. From the repo root: bash bench/results/2026-12-06-seventeenth/call3.sh
# (a) NOTES v30: a per-key bias (b, 1, 1, s) added without widening each key pair twice (bias_tile.cuh add_row in
#     the warp-specialised forward, add_row_t in the warp-specialised backward: d64); A/B against HEAD's kernels
#     (ab/head/kernels_cu), two alternated rounds, d64 / d128, 8k, causal and not, forward and backward; the
#     plain calls once for the ratio;
# (b) test_bias.py on the Hopper kernels, memcheck and racecheck of sanitize_case.py's bias section;
# (c) dropout_seed_source.py at d128 again (bwd_sm90.cu now reads a seed in memory at each use, as before).
# Logs under /tmp/r, packed into $OUT/r.tgz after each part.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
R=/tmp/r; mkdir -p $R
pack() { tar -czf $OUT/r.tgz -C $R . ; }
nvidia-smi --query-gpu=name --format=csv,noheader > $R/gpu.txt
args="--mode fwd,bwd --headdim 64,128 --seqlen 8k --causal both --peers none --no-check"
timeout 330 bash bench/ab_kernels.sh $R/ab ab/head/kernels_cu 2 -- $args --bias b,1,1,s > $R/ab.log 2>&1
CUFLASH_CACHE_DIR=/tmp/cuflash-ab-new timeout 60 python3 -m cuflash bench $args --no-progress > $R/plain.log 2>&1
CUFLASH_CACHE_DIR=/tmp/cc-seed timeout 150 python3 kernels_cu/dev/dropout_seed_source.py 128 2048,8192 > $R/seed-source-d128.log 2>&1
pack
export OMP_NUM_THREADS=4 OPENBLAS_NUM_THREADS=4
CUFLASH_CACHE_DIR=/tmp/cc-t1 timeout 200 python3 -m pytest tests/gpu/test_bias.py -k "not portable" -q -rfE -p no:cacheprovider \
  > $R/bias-tests.log 2>&1 &
( CUFLASH_CACHE_DIR=/tmp/cc-t2 SANITIZE_SECTIONS=bias timeout 150 compute-sanitizer --tool memcheck --error-exitcode 9 \
    python3 bench/sanitize_case.py > $R/memcheck.log 2>&1
  CUFLASH_CACHE_DIR=/tmp/cc-t2 SANITIZE_SECTIONS=bias timeout 150 compute-sanitizer --tool racecheck --error-exitcode 9 \
    python3 bench/sanitize_case.py > $R/racecheck.log 2>&1 ) &
wait
pack
tail -n 20 $R/ab.log; grep -E " (fwd|bwd) " $R/plain.log; cat $R/seed-source-d128.log
for f in $R/*.log; do echo "$f: $(grep -E '^FAILED|^ERROR' $f | head -n 5) $(tail -n 2 $f | tr '\n' ' ')"; done
