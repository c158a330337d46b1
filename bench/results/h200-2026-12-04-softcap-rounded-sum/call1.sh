#!/usr/bin/env bash
# session call 1: portable fixed offset tests + A/B; d256 512 tiles; window variants
set -u
cd "$(dirname "$0")/../.."
export PYTHONPATH=. PYTHONUNBUFFERED=1 CUFLASH_CACHE_DIR=/tmp/cc
L=$OUT/logs; mkdir -p $L
AB=kernels_cu/dev/fwd_grid_ab.py
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv > $L/info.txt
# 1. portable fixed-offset tests (background, CPU-heavy references)
(OMP_NUM_THREADS=4 timeout 280 python3 -m pytest tests/gpu/test_variants.py -q -rfE -p no:cacheprovider \
   -k "portable and (softcap or sink) and not fp16" > $L/tests-portable-fixed.log 2>&1) &
tp=$!
# 2. window variants, d128 (and d64 base), two rounds alternated
W=128:0,256:0,512:0,1024:0
for r in 1 2; do
  WINDOWS=$W python3 $AB base 64,128 >> $L/ab-window.txt 2>&1
  WINDOWS=$W CUFLASH_KERNELS_DIR=bench/_exp/defer/kernels_cu CUFLASH_CACHE_DIR=/tmp/cc-defer python3 $AB defer128 128 >> $L/ab-window.txt 2>&1
  WINDOWS=$W TILES=128:128x128s3 python3 $AB s3q1 128 >> $L/ab-window.txt 2>&1
done
# 3. d256 at 512: 80-key blocks vs 64-key blocks
for r in 1 2; do
  SEQLENS=512,1024 python3 $AB base 256 >> $L/ab-d256.txt 2>&1
  SEQLENS=512,1024 TILES=256:128x64 python3 $AB n64 256 >> $L/ab-d256.txt 2>&1
done
# 4. portable softcap A/B (fixed vs running max vs plain)
for r in 1 2; do
  CUFLASH_DISABLE_SM90=1 SEQLENS=2048,8192 SOFTCAP=30 python3 $AB pfixed 64,128 >> $L/ab-portable.txt 2>&1
  CUFLASH_DISABLE_SM90=1 SEQLENS=2048,8192 SOFTCAP=30 FIXED=0 python3 $AB prunmax 64,128 >> $L/ab-portable.txt 2>&1
done
CUFLASH_DISABLE_SM90=1 SEQLENS=2048,8192 python3 $AB pplain 64,128 >> $L/ab-portable.txt 2>&1
wait $tp
tail -3 $L/tests-portable-fixed.log
cat $L/ab-window.txt $L/ab-d256.txt $L/ab-portable.txt
tar czf $OUT/logs.tgz -C $OUT logs
