#!/usr/bin/env bash
# session call 4: rounded P sum by integer rounding: speed A/B, bench, then every GPU test group,
# the softcap error survey and memcheck (forward) on both families
set -u
cd "$(dirname "$0")/../.."
export PYTHONPATH=. PYTHONUNBUFFERED=1 CUFLASH_CACHE_DIR=/tmp/cuflash-gpu-check-cache
L=$OUT/logs; mkdir -p $L
AB=kernels_cu/dev/fwd_grid_ab.py
OLDK=bench/_exp/oldk/kernels_cu
(python3 -m cuflash compile -j 8 > $L/compile-early.log 2>&1) &
for r in 1; do
  SEQLENS=2048,8192 SOFTCAP=30 python3 $AB rounded 64,128 >> $L/ab-sm90.txt 2>&1
  env CUFLASH_KERNELS_DIR=$OLDK CUFLASH_CACHE_DIR=/tmp/cc-old SEQLENS=2048,8192 SOFTCAP=30 python3 $AB unround 64,128 >> $L/ab-sm90.txt 2>&1
  CUFLASH_DISABLE_SM90=1 SEQLENS=2048,8192 SOFTCAP=30 python3 $AB prounded 64,128 >> $L/ab-portable.txt 2>&1
  env CUFLASH_KERNELS_DIR=$OLDK CUFLASH_CACHE_DIR=/tmp/cc-old CUFLASH_DISABLE_SM90=1 SEQLENS=2048,8192 SOFTCAP=30 python3 $AB punround 64,128 >> $L/ab-portable.txt 2>&1
done
B="python3 -m cuflash bench --headdim 64,128 --seqlen 8k --batch 2 --nheads 16 --mode fwd,bwd --peers none --no-progress"
$B > $L/bench-plain.log 2>&1
$B --softcap 30 > $L/bench-softcap30.log 2>&1
CUFLASH_DISABLE_SM90=1 $B --softcap 30 > $L/bench-portable-softcap30.log 2>&1
(DTYPES=bf16 OMP_NUM_THREADS=2 CUFLASH_DISABLE_SM90=1 timeout 330 python3 kernels_cu/dev/softcap_error.py 24 > $L/err-portable.txt 2>&1) &
(DTYPES=bf16 OMP_NUM_THREADS=2 timeout 330 python3 kernels_cu/dev/softcap_error.py 24 > $L/err-sm90.txt 2>&1) &
(for d in 0 1; do SANITIZE_SECTIONS=forward CUFLASH_DISABLE_SM90=$d timeout 300 compute-sanitizer --tool memcheck --error-exitcode 9 \
   python3 bench/sanitize_case.py > $L/memcheck-forward-$d.log 2>&1; echo "memcheck forward disable_sm90=$d rc=$?" >> $L/memcheck.txt; done) &
bash bench/gpu_tests_parallel.sh $L/tests 270 > $L/tests-summary.txt 2>&1
wait
cat $L/tests-summary.txt; cat $L/memcheck.txt; grep -h "ERROR SUMMARY" $L/memcheck-forward-*.log
cat $L/err-*.txt; cat $L/ab-sm90.txt $L/ab-portable.txt
for f in $L/bench-*.log; do echo "== $f"; grep -E "^ bf16" $f; done
tar czf $OUT/logs.tgz -C $OUT logs
