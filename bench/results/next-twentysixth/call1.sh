# Written in the twenty-fifth session for the next: why the biased forwards do not follow their instruction
# counts at boost clocks (bench/NOTES.md v36). From the repo root: DEADLINE=<limit less 30 s> bash <this>.
# (1) kernels_cu/dev/clock_probe.py: SM clock, power and throttle reasons while plain / per-key / full-bias
#     forwards run back to back (d128 8k), non-causal and causal, on HEAD and on HEAD + the k-step patch
#     (kernels_cu/dev/fwd90_bias_per_key_k_step.patch, 12% fewer instructions in the per-key kernel).
# (2) ncu at the kernels' own clocks (--clock-control none) of the same three forwards on HEAD.
# If the per-key kernel runs at the plain one's clock and power, the clock is not the answer: read the
# stall reasons of (2) beside call6/call7 of the twenty-fifth session (locked clocks).
export PYTHONUNBUFFERED=1
DEADLINE=${DEADLINE:-540}
left() { echo $((DEADLINE - SECONDS)); }
R=/tmp/r; rm -rf $R; mkdir -p $R
pack() { tar -czf $OUT/r.tmp.tgz -C $R . && mv $OUT/r.tmp.tgz $OUT/r.tgz ; }
( while sleep 15; do pack; done ) &
packer=$!
nvidia-smi > $R/nvidia-smi.txt
rm -rf /tmp/k && mkdir /tmp/k && cp -r cuflash kernels_cu tests pyproject.toml /tmp/k/
(cd /tmp/k && patch -p1 -s < kernels_cu/dev/fwd90_bias_per_key_k_step.patch) && echo "k patched"
for t in . /tmp/k; do (cd $t && PYTHONPATH=$t CUFLASH_CACHE_DIR=/tmp/cc-$(basename $t) timeout 150 python3 -m cuflash \
  compile --arch sm_90a --features "" --features causal --features bias --features causal,bias --dtypes bf16 \
  --only fwd90_bf16_d128 -j 7 > $R/compile-$(basename $t).log 2>&1) & done
wait $(jobs -p | grep -v "^$packer$")
for causal in 0 1; do for t in . /tmp/k; do [ $(left) -gt 60 ] || break
  (cd $t && CAUSAL=$causal PYTHONPATH=$t CUFLASH_CACHE_DIR=/tmp/cc-$(basename $t) timeout 60 python3 \
     kernels_cu/dev/clock_probe.py 3 2>&1 | sed "s|^|$(basename $t) |" | tee -a $R/clocks.txt)
done; done
[ $(left) -gt 60 ] && PYTHONPATH=$PWD CUFLASH_CACHE_DIR=/tmp/cc-. timeout $(( $(left) - 10 )) ncu --clock-control none \
  --profile-from-start off --section SpeedOfLight --section WarpStateStats --section SchedulerStats \
  --section InstructionStats python3 bench/results/2026-12-07-twentyfifth/ncu_per_key.py > $R/ncu-boost.txt 2>&1
grep -E "case|Duration|SM Frequency|Executed Instructions  |Issue Slots Busy" $R/ncu-boost.txt
kill $packer; pack
