# Twenty-sixth session, call 3 (call 2 cut down to the device time left): idle consumer warpgroups.
# (1) idle_check.py at d64 / d128 (float64 rule). (2) one A/B round against HEAD~1 (old.tgz): dense d64 / d128
# at 512, 1050, 2048 beside SDPA cuDNN, then cuflash bench --varlen mix d64 / d128 causal both.
# (3) compute-sanitizer memcheck of idle_sanitize.py beside test_varlen.py, as long as time is left.
export PYTHONUNBUFFERED=1 CUFLASH_CACHE_DIR=/tmp/cc
DEADLINE=${DEADLINE:-230}
left() { echo $((DEADLINE - SECONDS)); }
R=/tmp/r; rm -rf $R; mkdir -p $R
pack() { tar -czf $OUT/r.tmp.tgz -C $R . && mv $OUT/r.tmp.tgz $OUT/r.tgz ; }
( while sleep 15; do pack; done ) &
packer=$!
D=bench/results/2026-12-07-twentysixth
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader > $R/gpu.txt
rm -rf /tmp/old && mkdir /tmp/old && tar -xzf $D/old.tgz -C /tmp/old
(cd /tmp/old && PYTHONPATH=/tmp/old CUFLASH_CACHE_DIR=/tmp/cc-old timeout 60 python3 -m cuflash compile --features "" \
   --features varlen --features varlen,causal --dtypes bf16 --only fwd90_bf16_d64 --only fwd90_bf16_d128 -j 6 > $R/old-compile.log 2>&1) &
DIMS=64,128 PYTHONPATH=$PWD timeout 90 python3 $D/idle_check.py 2>&1 | tee $R/check.txt | grep -E "FAIL|kernels|failures"
wait $(jobs -p | grep -v "^$packer$")
AB=kernels_cu/dev/fwd_grid_ab.py
for t in /tmp/old $PWD; do lab=$([ $t = $PWD ] && echo new || echo old)
  (cd $t && PYTHONPATH=$t CUFLASH_CACHE_DIR=/tmp/cc-$lab SEQLENS=512,1050,2048 PEER=cudnn timeout 50 python3 \
     $PWD/$AB $lab 64,128 2>&1 | tee -a $R/dense.txt)
done
for t in /tmp/old $PWD; do lab=$([ $t = $PWD ] && echo new || echo old); [ $(left) -gt 25 ] || break
  (cd $t && PYTHONPATH=$t CUFLASH_CACHE_DIR=/tmp/cc-$lab timeout 30 python3 -m cuflash bench --mode fwd --varlen mix \
     --seqlen 8k --headdim 64,128 --causal both --peers none --no-check --no-progress 2>&1 | sed "s/^/$lab /" \
     | tee -a $R/varlen.txt | grep -E " fwd ")
done
L=$(( $(left) - 10 ))
if [ $L -gt 20 ]; then
  PYTHONPATH=$PWD timeout $L compute-sanitizer --tool memcheck --error-exitcode 9 python3 $D/idle_sanitize.py > $R/memcheck.log 2>&1; echo "rc=$?" >> $R/memcheck.log &
  PYTHONPATH=$PWD OMP_NUM_THREADS=4 timeout $L python3 -m pytest tests/gpu/test_varlen.py -q -p no:cacheprovider > $R/t-varlen.log 2>&1 &
  wait $(jobs -p | grep -v "^$packer$")
fi
tail -n 3 $R/t-*.log $R/memcheck.log
kill $packer; pack
