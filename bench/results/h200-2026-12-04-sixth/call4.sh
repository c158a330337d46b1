#!/usr/bin/env bash
# Call 4: the test groups call 2's limit cut (the portable ones; the Hopper backwards' machine code
# is byte-identical to HEAD's), beside compute-sanitizer memcheck on the backward section: the
# portable kernel (dQ added without bounds tests, varlen included) and the Hopper ones (a lone
# softcap, folded, now in the section).
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 CUFLASH_CACHE_DIR=/tmp/cc XLA_PYTHON_CLIENT_PREALLOCATE=false
export OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 MKL_NUM_THREADS=2
o=$OUT
pack() { tar -czf $OUT/logs.tgz -C $o --exclude logs.tgz . 2>/dev/null; }
python3 -m cuflash compile -j 16 > $o/compile.log 2>&1
groups=(
  "tests/gpu/test_forward.py tests/gpu/test_validation.py tests/gpu/test_launch_plans.py tests/gpu/test_reliability.py tests/gpu/test_cache.py|not sm90"
  "tests/gpu/test_variants.py|portable and (all_four or long_window or short_band or short_causal or unseen)"
  "tests/gpu/test_bias.py tests/gpu/test_varlen.py tests/gpu/test_packed.py|not sm90"
)
pids=()
for i in "${!groups[@]}"; do
  files=${groups[$i]%%|*}; sel=${groups[$i]#*|}
  timeout 400 python3 -m pytest $files -k "$sel" -q -rfE -p no:cacheprovider > $o/tests-$i.log 2>&1 &
  pids+=($!)
done
for fam in 1 0; do
  (SANITIZE_SECTIONS=backward CUFLASH_DISABLE_SM90=$fam timeout 400 compute-sanitizer --tool memcheck --error-exitcode 9 \
    python3 bench/sanitize_case.py > $o/memcheck-bwd-$fam.log 2>&1; echo "memcheck bwd disable_sm90=$fam rc=$?" >> $o/summary.txt) &
  pids+=($!)
done
for i in "${!pids[@]}"; do wait ${pids[$i]}; done
for i in "${!groups[@]}"; do echo "group $i (${groups[$i]}): $(tail -n 1 $o/tests-$i.log)" >> $o/summary.txt; done
grep -h "^FAILED\|^ERROR" $o/tests-*.log | head -20 >> $o/summary.txt
tail -n 2 $o/memcheck-bwd-*.log >> $o/summary.txt
pack
cat $o/summary.txt
