# Written 2026-12-06 (sixteenth session) for the next one; its device budget ran out first.
# NOTES dr8's "next": the d128 Hopper dropout forward's keep words drawn by producer warps 1-3 apart from
# warp 0's copies (kernels_cu/dev/fwd90_dropout_keep_by_drawer_warps.patch: the patch changes cuflash/specs.py
# too, so the A/B runs two copies of the tree, not bench/ab_kernels.sh). Compile-only so far: spill-free
# (NVRTC 12.9 and 13.0, sm_90a, bf16 / fp16, every dropout feature set), producer 56 / consumers 224 registers.
# (a) A/B, d128 (d64 unchanged: the control), forward, dropout 0.1, two alternated rounds;
# (b) in the patched tree: tests/gpu/test_dropout.py (Hopper), the mask test, memcheck and racecheck of
#     sanitize_case.py's backward section (dropout at d128 alone, with every variant, and varlen).
# From the repo root: bash bench/results/next-sixteenth/call1.sh. Logs under /tmp/r, packed into $OUT/r.tgz.
export PYTHONUNBUFFERED=1
R=/tmp/r; mkdir -p $R/ab $R/t
pack() { tar -czf $OUT/r.tgz -C $R . ; }
nvidia-smi --query-gpu=name --format=csv,noheader > $R/gpu.txt
rm -rf /tmp/dr8b && mkdir /tmp/dr8b && cp -r cuflash kernels_cu bench tests pyproject.toml /tmp/dr8b/ \
  && (cd /tmp/dr8b && patch -p1 -s < kernels_cu/dev/fwd90_dropout_keep_by_drawer_warps.patch) || exit 1
args="--mode fwd --headdim 64,128 --seqlen 2k,8k --causal both --dropout 0.1 --peers none --no-check --no-progress"
for r in 1 2; do
  for tree in new:/tmp/dr8b old:$PWD; do
    tag=${tree%%:*}; dir=${tree#*:}
    (cd $dir && PYTHONPATH=$dir CUFLASH_CACHE_DIR=/tmp/cc-$tag timeout 120 python3 -m cuflash bench $args \
       --json $R/ab/$tag-$r.json > $R/ab/$tag-$r.log 2>&1)
  done
done
grep -h " fwd " $R/ab/*-?.log | sort | head -n 40
pack
cd /tmp/dr8b && export PYTHONPATH=/tmp/dr8b OMP_NUM_THREADS=3 OPENBLAS_NUM_THREADS=3
CUFLASH_CACHE_DIR=/tmp/cc-t timeout 200 python3 -m pytest tests/gpu/test_dropout.py -k "not portable" -q -rfE -p no:cacheprovider > $R/t/sm90.log 2>&1 &
( CUFLASH_CACHE_DIR=/tmp/cc-t3 timeout 40 python3 -m pytest tests/gpu/test_dropout_mask.py -q -rfE -p no:cacheprovider > $R/t/mask.log 2>&1
  CUFLASH_CACHE_DIR=/tmp/cc-t4 SANITIZE_SECTIONS=backward timeout 150 compute-sanitizer --tool memcheck --error-exitcode 9 \
    python3 bench/sanitize_case.py > $R/t/memcheck.log 2>&1 ) &
CUFLASH_CACHE_DIR=/tmp/cc-t5 SANITIZE_SECTIONS=backward timeout 200 compute-sanitizer --tool racecheck --error-exitcode 9 \
    python3 bench/sanitize_case.py > $R/t/racecheck.log 2>&1 &
wait
pack
for f in $R/t/*.log; do echo "$f: $(grep -E '^FAILED|^ERROR' $f | head -n 5) $(tail -n 2 $f | tr '\n' ' ')"; done
