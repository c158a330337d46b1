#!/usr/bin/env bash
# Call 1 for the branch bias-ws (bench/NOTES.md v26): the staged bias of the warp-specialised Hopper
# forward and d64 backward. Its GPU tests (both families), then memcheck and racecheck of sanitize_case.py's
# bias section on the Hopper kernels. call2.sh times it.
set -u
export PYTHONUNBUFFERED=1
o=$OUT
pack() { tar -czf $OUT/logs.tgz -C $o --exclude logs.tgz . 2>/dev/null; }
PYTHONPATH=. CUFLASH_CACHE_DIR=/tmp/cc timeout 200 python3 -m pytest tests/gpu/test_bias.py -q -rfE -p no:cacheprovider \
  > $o/test-bias.txt 2>&1
pack
PYTHONPATH=. CUFLASH_CACHE_DIR=/tmp/cc timeout 90 python3 -m pytest tests/gpu/test_variants.py tests/gpu/test_dropout.py \
  tests/gpu/test_torch.py tests/gpu/test_jax.py -k "bias and not portable" -q -rfE -p no:cacheprovider > $o/test-bias-others.txt 2>&1
pack
for tool in memcheck racecheck; do
  PYTHONPATH=. CUFLASH_CACHE_DIR=/tmp/cc SANITIZE_SECTIONS=bias CUFLASH_DISABLE_SM90=0 timeout 150 \
    compute-sanitizer --tool $tool --error-exitcode 9 python3 bench/sanitize_case.py > $o/sanitizer-$tool.txt 2>&1
  echo "$tool rc=$?" >> $o/sanitizer-summary.txt
  pack
done
tail -n 3 $o/test-bias.txt $o/test-bias-others.txt; cat $o/sanitizer-summary.txt
