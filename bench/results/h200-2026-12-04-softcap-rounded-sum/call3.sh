#!/usr/bin/env bash
# session call 3: the rounded row sum under the fixed offset: accuracy (both families), speed, tests
set -u
cd "$(dirname "$0")/../.."
export PYTHONPATH=. PYTHONUNBUFFERED=1 CUFLASH_CACHE_DIR=/tmp/cc
L=$OUT/logs; mkdir -p $L
OLD="CUFLASH_KERNELS_DIR=bench/_exp/oldk/kernels_cu CUFLASH_CACHE_DIR=/tmp/cc-old"
SE=kernels_cu/dev/softcap_error.py
export DTYPES=bf16 OMP_NUM_THREADS=3
(CUFLASH_DISABLE_SM90=1 timeout 300 python3 $SE 24 > $L/err-portable-rounded.txt 2>&1) &
(timeout 300 python3 $SE 24 > $L/err-sm90-rounded.txt 2>&1) &
(env CUFLASH_KERNELS_DIR=bench/_exp/oldk/kernels_cu CUFLASH_CACHE_DIR=/tmp/cc-old timeout 300 python3 $SE 24 > $L/err-sm90-unrounded.txt 2>&1) &
(FIXED=0 timeout 300 python3 $SE 24 > $L/err-sm90-runmax.txt 2>&1) &
wait
unset DTYPES OMP_NUM_THREADS
(OMP_NUM_THREADS=4 timeout 250 python3 -m pytest tests/gpu/test_variants.py -q -rfE -p no:cacheprovider \
   -k "(softcap or sink) and not fp16" > $L/tests-softcap.log 2>&1) &
t=$!
AB=kernels_cu/dev/fwd_grid_ab.py
for r in 1 2; do
  SEQLENS=2048,8192 SOFTCAP=30 python3 $AB rounded 64,128 >> $L/ab-sm90.txt 2>&1
  env CUFLASH_KERNELS_DIR=bench/_exp/oldk/kernels_cu CUFLASH_CACHE_DIR=/tmp/cc-old SEQLENS=2048,8192 SOFTCAP=30 python3 $AB unround 64,128 >> $L/ab-sm90.txt 2>&1
  CUFLASH_DISABLE_SM90=1 SEQLENS=2048,8192 SOFTCAP=30 python3 $AB prounded 64,128 >> $L/ab-portable.txt 2>&1
  env CUFLASH_KERNELS_DIR=bench/_exp/oldk/kernels_cu CUFLASH_CACHE_DIR=/tmp/cc-old CUFLASH_DISABLE_SM90=1 SEQLENS=2048,8192 SOFTCAP=30 python3 $AB punround 64,128 >> $L/ab-portable.txt 2>&1
done
for f in /tmp/cc/fwd90_bf16_d128_full_softcap_m128n128s2f.*.cubin /tmp/cc-old/fwd90_bf16_d128_full_softcap_m128n128s2f.*.cubin /tmp/cc/fwd_bf16_d128_full_softcap_m128n64w4f.*.cubin /tmp/cc-old/fwd_bf16_d128_full_softcap_m128n64w4f.*.cubin; do
  [ -f "$f" ] && echo "$f: $(cuobjdump -sass $f | grep -c F2FP) F2FP, $(cuobjdump -sass $f | grep -cE '^\s+/\*[0-9a-f]+\*/') instructions" >> $L/sass-count.txt
done
wait $t
tail -3 $L/tests-softcap.log; cat $L/sass-count.txt
for f in $L/err-*.txt; do echo "== $f"; cat $f; done
cat $L/ab-sm90.txt $L/ab-portable.txt
tar czf $OUT/logs.tgz -C $OUT logs
