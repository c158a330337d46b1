#!/usr/bin/env bash
# session 2026-12-04c, call 4: the end of test_variants -k sm90 (cut off in call 3); packed tanh experiment (A/B, accuracy).
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 CUFLASH_CACHE_DIR=/tmp/cc4
o=$OUT
timeout 200 python3 -m pytest tests/gpu/test_variants.py -q -p no:cacheprovider -rfE -k "sm90 and not fp32 and (rows_that_see_no_key or deterministic or long_window or short_band or short_causal or unseen)" > $o/tests-tail.log 2>&1; echo "tail tests rc=$?"; tail -1 $o/tests-tail.log
for r in 1 2; do
  SOFTCAP=30 SEQLENS=2048,8192 timeout 80 python3 kernels_cu/dev/fwd_grid_ab.py fixed 64,128 >> $o/ab.txt 2>&1
  CUFLASH_NVRTC_OPTIONS=-DCUFLASH_SOFTCAP_TANH_PACKED=1 SOFTCAP=30 SEQLENS=2048,8192 timeout 80 python3 kernels_cu/dev/fwd_grid_ab.py packed 64,128 >> $o/ab.txt 2>&1
done
sort -k2,4 -s $o/ab.txt
CUFLASH_NVRTC_OPTIONS=-DCUFLASH_SOFTCAP_TANH_PACKED=1 timeout 120 python3 -m pytest tests/gpu/test_variants.py -q -p no:cacheprovider -rfE -k "sm90 and bf16 and (test_softcap or both_ends or sink_window)" > $o/tests-packed.log 2>&1; echo "packed tests rc=$?"; grep -E "^E .*max error|passed|failed" $o/tests-packed.log | tail -12
