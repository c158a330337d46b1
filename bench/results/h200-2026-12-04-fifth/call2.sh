#!/usr/bin/env bash
# session call 2: the standard sweep with SDPA flash and cuDNN (issue 14's table), forward then backward
set -u
cd "$(dirname "$0")/../../.."
export PYTHONPATH=. PYTHONUNBUFFERED=1 CUFLASH_CACHE_DIR=/tmp/cuflash-gpu-check-cache
L=$OUT/logs; mkdir -p $L
python3 -m cuflash compile -j 16 > $L/compile.log 2>&1
for mode in fwd bwd; do
  limit=$([ $mode = fwd ] && echo 190 || echo 310)
  timeout $limit python3 -m cuflash bench --preset standard --mode $mode --peers sdpa-flash,sdpa-cudnn \
    --json $L/standard-$mode.json > $L/standard-$mode.txt 2>&1
  echo "sweep $mode rc=$?"
  tail -n 3 $L/standard-$mode.txt
  tar czf $OUT/logs.tgz -C $OUT logs
done
