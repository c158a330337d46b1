#!/usr/bin/env bash
# Call 1 on the branch `pending` (main + bias-ws + decode-contig, bench/NOTES.md "Written, not yet run on a
# GPU"): the GPU tests of both changes, then memcheck and racecheck of sanitize_case.py's bias and kvcache
# sections on the Hopper kernels. Timings after: bench/results/h200-bias-ws/call2.sh (the bias, against main's
# kernels) and the bench loop of bench/results/h200-decode-contig/call1.sh (decode).
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 CUFLASH_CACHE_DIR=/tmp/cc
o=$OUT
pack() { tar -czf $OUT/logs.tgz -C $o --exclude logs.tgz . 2>/dev/null; }
timeout 200 python3 -m pytest tests/gpu/test_bias.py -q -rfE -p no:cacheprovider > $o/test-bias.txt 2>&1
pack
timeout 120 python3 -m pytest tests/gpu/test_kvcache.py -q -rfE -p no:cacheprovider > $o/test-kvcache.txt 2>&1
pack
timeout 90 python3 -m pytest tests/gpu/test_variants.py tests/gpu/test_dropout.py tests/gpu/test_torch.py \
  tests/gpu/test_jax.py -k "bias and not portable" -q -rfE -p no:cacheprovider > $o/test-bias-others.txt 2>&1
pack
for section in bias kvcache; do
  for tool in memcheck racecheck; do
    SANITIZE_SECTIONS=$section CUFLASH_DISABLE_SM90=0 timeout 100 compute-sanitizer --tool $tool --error-exitcode 9 \
      python3 bench/sanitize_case.py > $o/sanitizer-$section-$tool.txt 2>&1
    echo "$section $tool rc=$?" >> $o/sanitizer-summary.txt
    pack
  done
done
tail -n 3 $o/test-*.txt; cat $o/sanitizer-summary.txt
