# Third call (2026-12-06): the dropout keep test without its final and (dropout.cuh: dropout_keep_words
# leaves bits other than 8b + 7 undefined; keep_bits joins a pair of words with a select). The working
# tree ("new") against HEAD's kernels (ab/head, untracked), dropout 0.1, two alternated rounds; then
# the Hopper dropout tests, the mask against NumPy's and memcheck of the dropout cases (the A/B forward only, and
# no portable tests: the budget left was ~390 s).
# Everything under /tmp/r, packed into $OUT/r.tgz after each part (the device tool returns 8 files).
export PYTHONPATH=. PYTHONUNBUFFERED=1
R=/tmp/r; mkdir -p $R/t
pack() { tar -czf $OUT/r.tgz -C $R . ; }
nvidia-smi --query-gpu=name --format=csv,noheader > $R/gpu.txt
CUFLASH_CACHE_DIR=/tmp/cc-ab timeout 150 bash bench/ab_kernels.sh $R/ab ab/head/kernels_cu 2 -- \
  --mode fwd --headdim 64,128 --seqlen 2k,8k --causal both --dropout 0.1 --peers none --no-check 2>&1 | tail -n 20
pack
export OMP_NUM_THREADS=3 OPENBLAS_NUM_THREADS=3
CUFLASH_CACHE_DIR=/tmp/cc-t timeout 110 python3 -m pytest tests/gpu/test_dropout.py -k "not portable" -q -rfE -p no:cacheprovider > $R/t/sm90.log 2>&1 &
CUFLASH_CACHE_DIR=/tmp/cc-t3 timeout 110 python3 -m pytest tests/gpu/test_dropout_mask.py -q -rfE -p no:cacheprovider > $R/t/mask.log 2>&1 &
CUFLASH_CACHE_DIR=/tmp/cc-t4 SANITIZE_SECTIONS=backward timeout 110 compute-sanitizer --tool memcheck --error-exitcode 9 \
  python3 bench/sanitize_case.py > $R/t/memcheck.log 2>&1 &
wait
pack
for f in $R/t/*.log; do echo "$f: $(grep -E '^FAILED|^ERROR' $f | head -n 5) $(tail -n 2 $f | tr '\n' ' ')"; done
