#!/usr/bin/env bash
# session 2026-12-04c, call 3: every GPU test (parallel groups) beside memcheck + racecheck of the forward
# section, then cuflash bench plain / softcap 30 (bf16 8k, batch 2, 16 heads at d128). Logs tarred into $OUT.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 CUFLASH_CACHE_DIR=/tmp/cuflash-gpu-check-cache
r=/tmp/r3; mkdir -p $r
python3 -m cuflash compile -j 16 > $r/compile0.log 2>&1
python3 -m cuflash compile --arch sm_90a --dtypes bf16 --features softcap --features causal,softcap,sink --features window,softcap,sink -j 16 > $r/compile1.log 2>&1
( for tool in memcheck racecheck; do
    SANITIZE_SECTIONS=forward timeout 320 compute-sanitizer --tool $tool --error-exitcode 9 python3 bench/sanitize_case.py > $r/san-$tool.log 2>&1
    echo "$tool rc=$? $(grep -E '(ERROR|RACECHECK) SUMMARY' $r/san-$tool.log | tail -1)" >> $r/san.txt
  done ) &
san=$!
bash bench/gpu_tests_parallel.sh $r/tests 300 > $r/tests.txt 2>&1; echo "tests rc=$?"
cat $r/tests.txt
wait $san; cat $r/san.txt
for cap in 0 30; do
  opt=""; [ $cap != 0 ] && opt="--softcap $cap"
  timeout 60 python3 -m cuflash bench --mode fwd,bwd --headdim 64,128 --seqlen 8k --batch 2 --nheads 16 --peers none $opt --no-progress > $r/bench-softcap$cap.log 2>&1
  grep -E "^ *bf16" $r/bench-softcap$cap.log
done
tar czf $OUT/logs.tgz -C $r .
