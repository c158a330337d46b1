#!/usr/bin/env bash
# session call 2: portable fixed offset accuracy A/B; window profile; portable sweep beside SDPA flash
set -u
cd "$(dirname "$0")/../.."
export PYTHONPATH=. PYTHONUNBUFFERED=1 CUFLASH_CACHE_DIR=/tmp/cc
L=$OUT/logs; mkdir -p $L
(python3 -m cuflash compile -j 6 --dtypes bf16 > $L/compile.log 2>&1) &
c=$!
(CUFLASH_DISABLE_SM90=1 DTYPES=bf16 OMP_NUM_THREADS=4 timeout 400 python3 kernels_cu/dev/softcap_error.py 24 > $L/softcap-error-fixed.txt 2>&1) &
a=$!
(CUFLASH_DISABLE_SM90=1 DTYPES=bf16 FIXED=0 OMP_NUM_THREADS=4 timeout 400 python3 kernels_cu/dev/softcap_error.py 24 > $L/softcap-error-runmax.txt 2>&1) &
b=$!
WINDOW=256:0 timeout 200 ncu --profile-from-start off --section SpeedOfLight --section MemoryWorkloadAnalysis \
  --section ComputeWorkloadAnalysis --section WarpStateStats --section Occupancy --section LaunchStats \
  python3 kernels_cu/dev/ncu_short.py > $L/ncu-window.txt 2>&1
wait $a $b $c
CUFLASH_DISABLE_SM90=1 timeout 420 python3 -m cuflash bench --dtype bf16 --headdim 64,128,256 --seqlen 512,1k,2k,4k,8k,16k \
  --causal both --mode fwd,bwd --peers sdpa-flash --json $L/portable-sweep.json --no-progress > $L/portable-sweep.txt 2>&1
cat $L/softcap-error-*.txt; grep -E "case|Duration|Throughput|DRAM|L2 Hit|Executed Ipc|Tensor|Registers|Shared Memory Config|Theoretical Occ|Achieved Occ" $L/ncu-window.txt | head -60
cat $L/portable-sweep.txt | tail -45
tar czf $OUT/logs.tgz -C $OUT logs
