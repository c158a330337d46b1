# Third call (2026-12-06, sixteenth session): NOTES dr8, the d128 Hopper dropout forward's keep words drawn by
# the producer warpgroup (fwd_sm90_ws.cu STAGED_KEEP), the working tree against HEAD's kernels (ab/head:
# `git archive HEAD kernels_cu | tar -x -C ab/head`); d64 is unchanged (the control). Forward only, two
# alternated rounds; then the Hopper dropout tests, the mask test, memcheck and racecheck of the backward
# section (dropout alone and with every variant at d128, and a varlen dropout forward).
export PYTHONPATH=. PYTHONUNBUFFERED=1
R=/tmp/r; mkdir -p $R/t
pack() { tar -czf $OUT/r.tgz -C $R . ; }
nvidia-smi --query-gpu=name --format=csv,noheader > $R/gpu.txt
CUFLASH_CACHE_DIR=/tmp/cc-ab timeout 200 bash bench/ab_kernels.sh $R/ab ab/head/kernels_cu 2 -- \
  --mode fwd --headdim 64,128 --seqlen 2k,8k --causal both --dropout 0.1 --peers none --no-check 2>&1 | tail -n 10
pack
export OMP_NUM_THREADS=3 OPENBLAS_NUM_THREADS=3
CUFLASH_CACHE_DIR=/tmp/cc-t timeout 200 python3 -m pytest tests/gpu/test_dropout.py -k "not portable" -q -rfE -p no:cacheprovider > $R/t/sm90.log 2>&1 &
( CUFLASH_CACHE_DIR=/tmp/cc-t3 timeout 40 python3 -m pytest tests/gpu/test_dropout_mask.py -q -rfE -p no:cacheprovider > $R/t/mask.log 2>&1
  CUFLASH_CACHE_DIR=/tmp/cc-t4 SANITIZE_SECTIONS=backward timeout 150 compute-sanitizer --tool memcheck --error-exitcode 9 \
    python3 bench/sanitize_case.py > $R/t/memcheck.log 2>&1 ) &
CUFLASH_CACHE_DIR=/tmp/cc-t5 SANITIZE_SECTIONS=backward timeout 200 compute-sanitizer --tool racecheck --error-exitcode 9 \
    python3 bench/sanitize_case.py > $R/t/racecheck.log 2>&1 &
wait
pack
for f in $R/t/*.log; do echo "$f: $(grep -E '^FAILED|^ERROR' $f | head -n 5) $(tail -n 2 $f | tr '\n' ' ')"; done
