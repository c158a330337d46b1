#!/usr/bin/env bash
# session 2026-12-04c, call 2: softcap at a fixed softmax offset: tests and A/B (fwd_grid_ab SOFTCAP=30, FIXED=0 / default)
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 CUFLASH_CACHE_DIR=/tmp/cc-new
o=$OUT
(python3 -m cuflash compile --arch sm_90a --dtypes bf16 --features softcap --features causal,softcap --only fwd90_bf16_d64 --only fwd90_bf16_d128 --only fwd90_bf16_d256 -j 16 > /dev/null 2>&1; echo compile rc=$?)
timeout 200 python3 -m pytest tests/gpu/test_variants.py -q -p no:cacheprovider -rfE -k "sm90 and (both_ends or (test_softcap and bf16) or sink_window or test_sink)" > $o/tests.log 2>&1; echo "tests rc=$?"; grep -E "passed|failed|FAILED|Error" $o/tests.log | tail -12
for r in 1 2; do
  for mode in fixed old; do
    fx=1; [ $mode = old ] && fx=0
    FIXED=$fx SOFTCAP=30 SEQLENS=2048,8192 timeout 100 python3 kernels_cu/dev/fwd_grid_ab.py $mode 64,128,256 >> $o/ab.txt 2>&1
  done
  [ $r = 1 ] && FIXED=0 FOLD=1 SOFTCAP=30 SEQLENS=2048,8192 timeout 60 python3 kernels_cu/dev/fwd_grid_ab.py oldfold 64 >> $o/ab.txt 2>&1
  SEQLENS=8192 timeout 100 python3 kernels_cu/dev/fwd_grid_ab.py plain 64,128 >> $o/ab.txt 2>&1
done
sort -k2,4 -s $o/ab.txt | grep -v "^ *$"
