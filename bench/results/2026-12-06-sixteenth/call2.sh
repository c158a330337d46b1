# Second call (2026-12-06, sixteenth session): NOTES dr7, the working tree against HEAD's kernels (ab/head,
# untracked: prepare with `git archive HEAD kernels_cu | tar -x -C ab/head`): the Hopper forward's keep words
# read by prmt from two sources (no join, select or shift) and the backward's Z / (1 - p) as one select and
# two multiplies. Dropout 0.1, bf16, two alternated rounds, forward and backward; the plain kernels at the same
# points for the ratio; then the dropout tests (both families), the mask test and memcheck.
# Logs under /tmp/r, packed into $OUT/r.tgz after each part (the device tool returns 8 files at most).
export PYTHONPATH=. PYTHONUNBUFFERED=1
R=/tmp/r; mkdir -p $R/t
pack() { tar -czf $OUT/r.tgz -C $R . ; }
nvidia-smi --query-gpu=name --format=csv,noheader > $R/gpu.txt
CUFLASH_CACHE_DIR=/tmp/cc-ab timeout 320 bash bench/ab_kernels.sh $R/ab ab/head/kernels_cu 2 -- \
  --mode fwd,bwd --headdim 64,128 --seqlen 2k,8k --causal both --dropout 0.1 --peers none --no-check 2>&1 | tail -n 20
pack
CUFLASH_CACHE_DIR=/tmp/cc-ab-new timeout 60 python3 -m cuflash bench --mode fwd,bwd --headdim 64,128 --seqlen 2k,8k \
  --causal both --peers none --no-check --no-progress > $R/plain.log 2>&1
tail -n 20 $R/plain.log
pack
export OMP_NUM_THREADS=3 OPENBLAS_NUM_THREADS=3
CUFLASH_CACHE_DIR=/tmp/cc-t timeout 160 python3 -m pytest tests/gpu/test_dropout.py -k "not portable" -q -rfE -p no:cacheprovider > $R/t/sm90.log 2>&1 &
CUFLASH_CACHE_DIR=/tmp/cc-t2 timeout 160 python3 -m pytest tests/gpu/test_dropout.py -k portable -q -rfE -p no:cacheprovider > $R/t/portable.log 2>&1 &
( CUFLASH_CACHE_DIR=/tmp/cc-t3 timeout 40 python3 -m pytest tests/gpu/test_dropout_mask.py -q -rfE -p no:cacheprovider > $R/t/mask.log 2>&1
  CUFLASH_CACHE_DIR=/tmp/cc-t4 SANITIZE_SECTIONS=backward timeout 120 compute-sanitizer --tool memcheck --error-exitcode 9 \
    python3 bench/sanitize_case.py > $R/t/memcheck.log 2>&1 ) &
wait
pack
for f in $R/t/*.log; do echo "$f: $(grep -E '^FAILED|^ERROR' $f | head -n 5) $(tail -n 2 $f | tr '\n' ' ')"; done
