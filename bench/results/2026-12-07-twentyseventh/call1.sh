# Written in the twenty-sixth session, run in the twenty-seventh (results in call1/; bench/NOTES.md v38): consumer warpgroups
# whose 64 rows all lie past the sequence's end walk the tile without computing (kernels_cu/dev/
# fwd90_idle_walk.patch on fwd_sm90_ws.cu; bench/NOTES.md v38). From the repo root:
#   DEADLINE=<the call's limit less 30 s> bash bench/results/2026-12-07-twentyseventh/call1.sh
# (1) idle_check.py on the patched tree: float64 rule, query lengths that end inside a tile, d32-d256,
#     every feature the kernel takes, varlen with sequences of 0, 1, 37, 64, 65 ... rows.
# (2) A/B HEAD against HEAD + patch, two alternated rounds: kernels_cu/dev/fwd_grid_ab.py d64 / d128 at 512,
#     1050, 2048, 4096 rows (16k tokens; 512, 1k, 2k and 4k end inside d64's 192-row tiles, 1050 inside
#     d128's 128-row ones) beside SDPA cuDNN; cuflash bench --varlen mix d64 / d128, causal both.
# (3) on the patched tree: forward GPU tests (test_forward, test_varlen, test_packed, test_variants sm90,
#     test_dropout, test_bias) beside compute-sanitizer memcheck and racecheck of idle_sanitize.py.
# Logs under /tmp/r -> $OUT/r.tgz, packed every 15 s.
export PYTHONUNBUFFERED=1
DEADLINE=${DEADLINE:-540}
left() { echo $((DEADLINE - SECONDS)); }
R=/tmp/r; rm -rf $R; mkdir -p $R
pack() { tar -czf $OUT/r.tmp.tgz -C $R . && mv $OUT/r.tmp.tgz $OUT/r.tgz ; }
( while sleep 15; do pack; done ) &
packer=$!
N=bench/results/2026-12-07-twentyseventh
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader > $R/gpu.txt
rm -rf /tmp/new && mkdir /tmp/new && cp -r cuflash kernels_cu tests bench pyproject.toml /tmp/new/
(cd /tmp/new && patch -p1 -s < kernels_cu/dev/fwd90_idle_walk.patch) && echo "patched" | tee $R/patched.txt
for t in $PWD /tmp/new; do lab=$([ $t = $PWD ] && echo old || echo new)
  (cd $t && PYTHONPATH=$t CUFLASH_CACHE_DIR=/tmp/cc-$lab timeout 120 python3 -m cuflash compile --features "" \
     --features causal --features varlen --features varlen,causal --dtypes bf16 --only fwd90_bf16 -j 8 > $R/compile-$lab.log 2>&1) &
done
wait $(jobs -p | grep -v "^$packer$")
(cd /tmp/new && PYTHONPATH=/tmp/new CUFLASH_CACHE_DIR=/tmp/cc-new timeout 150 python3 $N/idle_check.py 2>&1 \
   | tee $R/check.txt | grep -E "FAIL|kernels|failures")
AB=kernels_cu/dev/fwd_grid_ab.py
for r in 1 2; do for t in $PWD /tmp/new; do [ $(left) -gt 200 ] || break
  lab=$([ $t = $PWD ] && echo old || echo new)
  (cd $t && PYTHONPATH=$t CUFLASH_CACHE_DIR=/tmp/cc-$lab SEQLENS=512,1050,2048,4096 PEER=cudnn timeout 60 python3 \
     $AB $lab 64,128 2>&1 | tee -a $R/dense.txt)
  (cd $t && PYTHONPATH=$t CUFLASH_CACHE_DIR=/tmp/cc-$lab timeout 60 python3 -m cuflash bench --mode fwd --varlen mix \
     --seqlen 8k --headdim 64,128 --causal both --peers none --no-check --no-progress 2>&1 | sed "s/^/$lab r$r /" \
     | tee -a $R/varlen.txt | grep -E " fwd ")
done; done
L=$(( $(left) - 15 ))
if [ $L -gt 60 ]; then
  cd /tmp/new
  export PYTHONPATH=/tmp/new CUFLASH_CACHE_DIR=/tmp/cc-new OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2
  timeout $L python3 -m pytest tests/gpu/test_forward.py -q -p no:cacheprovider > $R/t-forward.log 2>&1 &
  timeout $L python3 -m pytest tests/gpu/test_varlen.py tests/gpu/test_packed.py -q -p no:cacheprovider > $R/t-varlen.log 2>&1 &
  timeout $L python3 -m pytest tests/gpu/test_variants.py -k sm90 -q -p no:cacheprovider > $R/t-variants.log 2>&1 &
  timeout $L python3 -m pytest tests/gpu/test_dropout.py tests/gpu/test_bias.py -q -p no:cacheprovider > $R/t-dropout-bias.log 2>&1 &
  (timeout $(( L / 2 )) compute-sanitizer --tool memcheck --error-exitcode 9 python3 $N/idle_sanitize.py > $R/memcheck.log 2>&1; echo "rc=$?" >> $R/memcheck.log
   timeout $(( L / 2 )) compute-sanitizer --tool racecheck --error-exitcode 9 python3 $N/idle_sanitize.py > $R/racecheck.log 2>&1; echo "rc=$?" >> $R/racecheck.log) &
  wait $(jobs -p | grep -v "^$packer$")
fi
tail -n 2 $R/t-*.log $R/memcheck.log $R/racecheck.log
kill $packer; pack
