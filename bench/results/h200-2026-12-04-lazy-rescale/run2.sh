#!/usr/bin/env bash
# session 2026-12-04c, call 1: lazy rescale (d256) tests, memcheck, A/B, bench; ncu of softcap d128.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 CUFLASH_CACHE_DIR=/tmp/cc-new
o=$OUT
nvidia-smi --query-gpu=name,clocks.sm --format=csv > $o/info.txt
(python3 -m cuflash compile --arch sm_90a --only fwd90_bf16_d256 --only fwd90_fp16_d256 -j 8 > $o/compile.log 2>&1; echo compile rc=$?) 
timeout 240 python3 -m pytest tests/gpu/test_forward.py -q -p no:cacheprovider -rfE -x -k "(sm90 and 256) or reversed or large_scores" > $o/tests-forward.log 2>&1; echo "forward tests rc=$?"; tail -2 $o/tests-forward.log
timeout 150 python3 -m pytest tests/gpu/test_variants.py tests/gpu/test_varlen.py tests/gpu/test_packed.py -q -p no:cacheprovider -rfE -k "256 and not portable" > $o/tests-variants.log 2>&1; echo "variant tests rc=$?"; tail -2 $o/tests-variants.log
SANITIZE_SECTIONS=forward timeout 150 compute-sanitizer --tool memcheck --error-exitcode 9 python3 bench/sanitize_case.py > $o/memcheck.log 2>&1; echo "memcheck rc=$?"; grep "ERROR SUMMARY" $o/memcheck.log | tail -1
timeout 120 ncu --profile-from-start off --section SpeedOfLight --section ComputeWorkloadAnalysis --section InstructionStats --section WarpStateStats --print-details all python3 bench/_ncu_softcap.py > $o/ncu-softcap.txt 2>&1; echo "ncu rc=$?"
for r in 1 2; do
  SEQLENS=512,1024,2048,4096,16384 timeout 100 python3 kernels_cu/dev/fwd_grid_ab.py lazy 256 > $o/ab-lazy-$r.txt 2>&1
  CUFLASH_KERNELS_DIR=bench/_oldk/kernels_cu CUFLASH_CACHE_DIR=/tmp/cc-old SEQLENS=512,1024,2048,4096,16384 timeout 100 python3 kernels_cu/dev/fwd_grid_ab.py old 256 > $o/ab-old-$r.txt 2>&1
done
tail -n 12 $o/ab-*.txt
timeout 150 python3 -m cuflash bench --mode fwd --headdim 256 --seqlen 512,1k,2k,4k --causal both --peers sdpa-cudnn --json $o/bench-d256.json > $o/bench-d256.log 2>&1; tail -n 14 $o/bench-d256.log
