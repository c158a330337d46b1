# Twenty-sixth session, call 2: idle consumer warpgroups past a sequence's end (fwd_sm90_ws.cu idle_step).
# (1) idle_check.py: float64 check, query lengths ending inside a tile, d32-d256, every feature, varlen.
# (2) A/B against HEAD (old.tgz = git archive 033c241), two alternated rounds: kernels_cu/dev/fwd_grid_ab.py
#     d64 / d128 at 512, 1050, 2048, 4096 rows (16k tokens) beside SDPA cuDNN; cuflash bench --varlen mix
#     (lengths log-uniform 64-8k) d64 / d128, causal both.
# (3) forward GPU tests (test_forward, test_varlen, test_packed, test_variants sm90, test_dropout) beside
#     compute-sanitizer memcheck and racecheck of idle_sanitize.py.
# Logs under /tmp/r -> $OUT/r.tgz, packed every 15 s. DEADLINE = the call's limit less 30 s.
export PYTHONUNBUFFERED=1 CUFLASH_CACHE_DIR=/tmp/cc
DEADLINE=${DEADLINE:-520}
left() { echo $((DEADLINE - SECONDS)); }
R=/tmp/r; rm -rf $R; mkdir -p $R
pack() { tar -czf $OUT/r.tmp.tgz -C $R . && mv $OUT/r.tmp.tgz $OUT/r.tgz ; }
( while sleep 15; do pack; done ) &
packer=$!
D=bench/results/2026-12-07-twentysixth
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader > $R/gpu.txt
rm -rf /tmp/old && mkdir /tmp/old && tar -xzf $D/old.tgz -C /tmp/old && cp -r kernels_cu/dev /tmp/old/kernels_cu/
PYTHONPATH=$PWD timeout 150 python3 $D/idle_check.py 2>&1 | tee $R/check.txt | grep -E "FAIL|kernels|failures"
AB=kernels_cu/dev/fwd_grid_ab.py
for r in 1 2; do for t in /tmp/old $PWD; do [ $(left) -gt 200 ] || break
  lab=$([ $t = $PWD ] && echo new || echo old)
  (cd $t && PYTHONPATH=$t CUFLASH_CACHE_DIR=/tmp/cc-$lab SEQLENS=512,1050,2048,4096 PEER=cudnn timeout 60 python3 \
     $PWD/$AB $lab 64,128 2>&1 | tee -a $R/dense.txt)
  (cd $t && PYTHONPATH=$t CUFLASH_CACHE_DIR=/tmp/cc-$lab timeout 60 python3 -m cuflash bench --mode fwd --varlen mix \
     --seqlen 8k --headdim 64,128 --causal both --peers none --no-check --no-progress 2>&1 | sed "s/^/$lab r$r /" \
     | tee -a $R/varlen.txt | grep -E " fwd ")
done; done
L=$(( $(left) - 15 ))
if [ $L -gt 60 ]; then
  export PYTHONPATH=$PWD OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2
  timeout $L python3 -m pytest tests/gpu/test_forward.py -q -x -p no:cacheprovider > $R/t-forward.log 2>&1 &
  timeout $L python3 -m pytest tests/gpu/test_varlen.py tests/gpu/test_packed.py -q -p no:cacheprovider > $R/t-varlen.log 2>&1 &
  timeout $L python3 -m pytest tests/gpu/test_variants.py -k sm90 -q -p no:cacheprovider > $R/t-variants.log 2>&1 &
  timeout $L python3 -m pytest tests/gpu/test_dropout.py tests/gpu/test_bias.py -q -p no:cacheprovider > $R/t-dropout-bias.log 2>&1 &
  (timeout $(( L / 2 )) compute-sanitizer --tool memcheck --error-exitcode 9 python3 $D/idle_sanitize.py > $R/memcheck.log 2>&1; echo "rc=$?" >> $R/memcheck.log
   timeout $(( L / 2 )) compute-sanitizer --tool racecheck --error-exitcode 9 python3 $D/idle_sanitize.py > $R/racecheck.log 2>&1; echo "rc=$?" >> $R/racecheck.log) &
  wait $(jobs -p | grep -v "^$packer$")
fi
tail -n 2 $R/t-*.log $R/memcheck.log $R/racecheck.log
kill $packer; pack
