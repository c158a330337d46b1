#!/usr/bin/env bash
# session call 5: l from the packed P (main) against the other roundings: speed, accuracy, tests, memcheck
set -u
cd "$(dirname "$0")/../.."
export PYTHONPATH=. PYTHONUNBUFFERED=1 CUFLASH_CACHE_DIR=/tmp/cuflash-gpu-check-cache
L=$OUT/logs; mkdir -p $L
AB=kernels_cu/dev/fwd_grid_ab.py
run() { # label tree(main|dir) extra-env...
  local label=$1 tree=$2; shift 2
  if [ "$tree" = main ]; then env "$@" SEQLENS=2048,8192 SOFTCAP=30 python3 $AB $label 64,128
  else env CUFLASH_KERNELS_DIR=bench/_exp/$tree/kernels_cu CUFLASH_CACHE_DIR=/tmp/cc-$tree "$@" SEQLENS=2048,8192 SOFTCAP=30 python3 $AB $label 64,128; fi
}
{ run packsum main; run rnaway rnaway; run trunc trunc; run unround oldk; run runmax main FIXED=0
  run packsum main; run unround oldk; } > $L/ab-sm90.txt 2>&1
{ run ppacksum main CUFLASH_DISABLE_SM90=1; run punround oldk CUFLASH_DISABLE_SM90=1; run prunmax main CUFLASH_DISABLE_SM90=1 FIXED=0; } > $L/ab-portable.txt 2>&1
SE=kernels_cu/dev/softcap_error.py
(DTYPES=bf16 OMP_NUM_THREADS=2 CUFLASH_DISABLE_SM90=1 timeout 250 python3 $SE 24 > $L/err-portable-packsum.txt 2>&1) &
(DTYPES=bf16 OMP_NUM_THREADS=2 timeout 250 python3 $SE 24 > $L/err-sm90-packsum.txt 2>&1) &
(DTYPES=bf16 OMP_NUM_THREADS=2 CUFLASH_KERNELS_DIR=bench/_exp/trunc/kernels_cu CUFLASH_CACHE_DIR=/tmp/cc-trunc timeout 250 python3 $SE 24 > $L/err-sm90-trunc.txt 2>&1) &
(for d in 0 1; do SANITIZE_SECTIONS=forward CUFLASH_DISABLE_SM90=$d timeout 200 compute-sanitizer --tool memcheck --error-exitcode 9 \
   python3 bench/sanitize_case.py > $L/memcheck-forward-$d.log 2>&1; echo "memcheck forward disable_sm90=$d rc=$?" >> $L/memcheck.txt; done) &
(OMP_NUM_THREADS=3 timeout 200 python3 -m pytest tests/gpu/test_variants.py -q -rfE -p no:cacheprovider -k "sm90 and (softcap or sink or rows_that_see or deterministic_is or long_window or short_band or short_causal or unseen)" > $L/tests-sm90.log 2>&1) &
(OMP_NUM_THREADS=3 timeout 200 python3 -m pytest tests/gpu/test_variants.py -q -rfE -p no:cacheprovider -k "portable and (softcap or sink or rows_that_see or deterministic_is or long_window or short_band or short_causal or unseen)" > $L/tests-portable.log 2>&1) &
(OMP_NUM_THREADS=2 timeout 200 python3 -m pytest tests/gpu/test_dropout.py tests/gpu/test_forward.py -q -rfE -p no:cacheprovider -k "softcap or fully_masked or repeat_is or empty_seq or 64bit or hopper_gets" > $L/tests-other.log 2>&1) &
wait
for f in $L/tests-*.log; do echo "$f: $(tail -n 1 $f)"; grep -h "^FAILED\|^ERROR" $f | head -5; done
cat $L/memcheck.txt; grep -h "ERROR SUMMARY" $L/memcheck-forward-*.log
for f in $L/err-*.txt; do echo "== $f"; cat $f; done
cat $L/ab-sm90.txt $L/ab-portable.txt
tar czf $OUT/logs.tgz -C $OUT logs
