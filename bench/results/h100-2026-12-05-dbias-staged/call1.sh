#!/usr/bin/env bash
# Call 1 on the branch `dbias-staged`, run from its tree at ab/ds of main's checkout (bench/NOTES.md v27, v28,
# b10): the bias GPU tests (test_bias.py runs its shapes at d64 and d128 here), the bias tests of the other
# files, then memcheck and racecheck of sanitize_case.py's bias section. Timings: call2.sh.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 CUFLASH_CACHE_DIR=/tmp/cc
o=$OUT
pack() { tar -czf $OUT/logs.tgz -C $o --exclude logs.tgz . 2>/dev/null; }
timeout 280 python3 -m pytest tests/gpu/test_bias.py -q -rfE -p no:cacheprovider -x > $o/test-bias.txt 2>&1
pack
timeout 90 python3 -m pytest tests/gpu/test_variants.py tests/gpu/test_dropout.py tests/gpu/test_torch.py \
  tests/gpu/test_jax.py -k "bias and not portable" -q -rfE -p no:cacheprovider > $o/test-bias-others.txt 2>&1
pack
for tool in memcheck racecheck; do
  SANITIZE_SECTIONS=bias timeout 100 compute-sanitizer --tool $tool --error-exitcode 9 \
    python3 bench/sanitize_case.py > $o/sanitizer-bias-$tool.txt 2>&1
  echo "bias $tool rc=$?" >> $o/sanitizer-summary.txt
  pack
done
tail -n 3 $o/test-*.txt; grep -E "FAILED|Error" $o/test-*.txt | head -20; cat $o/sanitizer-summary.txt
grep -E "ERROR SUMMARY|hazard" $o/sanitizer-bias-*.txt
