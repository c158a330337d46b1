#!/usr/bin/env bash
# session call 1: every GPU test group in parallel on HEAD (78d2caf + this session's edits)
set -u
cd "$(dirname "$0")/../../.."
export PYTHONPATH=. PYTHONUNBUFFERED=1 CUFLASH_CACHE_DIR=/tmp/cuflash-gpu-check-cache
L=$OUT/logs; mkdir -p $L
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv > $L/info.txt 2>&1
bash bench/gpu_tests_parallel.sh $L/tests ${LIMIT:-330} > $L/tests-summary.txt 2>&1
rm -f $L/tests/*.xml
cat $L/tests-summary.txt
tar czf $OUT/logs.tgz -C $OUT logs
