# Written 2026-12-06 (seventeenth session) for the next one; its device budget ran out first.
# NOTES v30's "next": a per-key bias (row stride 0) on a Hopper forward kernel of its own
# (kernels_cu/dev/fwd90_bias_per_key_kernel.patch: FwdSm90Spec.bias_per_key, name suffix "k", chosen in
# api.run_forward; the kernel adds with bias_tile.cuh add_row alone, every other bias with add and no branch).
# The patch changes cuflash/ too, so the A/B runs two copies of the tree, not bench/ab_kernels.sh.
# Compile-only so far: the per-key kernels spill-free for sm_90a under NVRTC 12.9 and 13.0 (bf16; bias alone and
# with causal, window+softcap+alibi+sink, causal+dropout, all of them); CPU tests pass with it (a new selection
# test in tests/cpu/test_features.py).
# Prediction: per-key d128 +3-6% (the two-instance form of call4 measured that), reaching 0.85x of plain; d64 as
# today's run-time branch (+12-15% over add); the full bias at d64 +1-2% (no branch), at d128 unchanged.
# (a) A/B, bf16 8k, d64 / d128, causal and not, forward, per-key and full biases, two alternated rounds, and the
#     plain forward once; (b) in the patched tree: test_bias.py on the Hopper kernels, memcheck and racecheck of
#     sanitize_case.py's bias section.
# From the repo root: bash bench/results/next-seventeenth/call1.sh. Logs under /tmp/r, packed into $OUT/r.tgz.
export PYTHONUNBUFFERED=1
R=/tmp/r; mkdir -p $R/ab $R/t
pack() { tar -czf $OUT/r.tgz -C $R . ; }
nvidia-smi --query-gpu=name --format=csv,noheader > $R/gpu.txt
rm -rf /tmp/pk && mkdir /tmp/pk && cp -r cuflash kernels_cu bench tests pyproject.toml /tmp/pk/ \
  && (cd /tmp/pk && patch -p1 -s < kernels_cu/dev/fwd90_bias_per_key_kernel.patch) || exit 1
args="--mode fwd --headdim 64,128 --seqlen 8k --causal both --peers none --no-check --no-progress"
for r in 1 2; do
  for tree in new:/tmp/pk old:$PWD; do
    tag=${tree%%:*}; dir=${tree#*:}
    for bias in b,1,1,s b,h,s,s; do
      (cd $dir && PYTHONPATH=$dir CUFLASH_CACHE_DIR=/tmp/cc-$tag timeout 120 python3 -m cuflash bench $args --bias $bias \
         > $R/ab/$tag-$bias-$r.log 2>&1)
    done
  done
done
PYTHONPATH=$PWD CUFLASH_CACHE_DIR=/tmp/cc-old timeout 60 python3 -m cuflash bench $args > $R/ab/plain.log 2>&1
grep -h " fwd " $R/ab/*.log | sort | head -n 40
pack
cd /tmp/pk && export PYTHONPATH=/tmp/pk OMP_NUM_THREADS=4 OPENBLAS_NUM_THREADS=4
CUFLASH_CACHE_DIR=/tmp/cc-t timeout 200 python3 -m pytest tests/gpu/test_bias.py -k "not portable" -q -rfE -p no:cacheprovider \
  > $R/t/bias.log 2>&1 &
( CUFLASH_CACHE_DIR=/tmp/cc-t2 SANITIZE_SECTIONS=bias timeout 150 compute-sanitizer --tool memcheck --error-exitcode 9 \
    python3 bench/sanitize_case.py > $R/t/memcheck.log 2>&1
  CUFLASH_CACHE_DIR=/tmp/cc-t2 SANITIZE_SECTIONS=bias timeout 150 compute-sanitizer --tool racecheck --error-exitcode 9 \
    python3 bench/sanitize_case.py > $R/t/racecheck.log 2>&1 ) &
wait
pack
for f in $R/t/*.log; do echo "$f: $(grep -E '^FAILED|^ERROR' $f | head -n 5) $(tail -n 2 $f | tr '\n' ' ')"; done
