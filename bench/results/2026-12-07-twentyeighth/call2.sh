# The twenty-eighth session's call (bench/NOTES.md v39): HEAD ("old"), the warpgroup index made warp-uniform
# (kernels_cu/dev/sm90_uniform_warpgroup.patch, "u") and that with the idle walk on top
# (kernels_cu/dev/fwd90_idle_walk_uniform.patch, "ui"). Written for a short call (~450 s of device time were
# left after failed starts): the A/B first, then the float64 check and the tests. From the repo root:
#   DEADLINE=<the call's limit less 30 s> bash bench/results/2026-12-07-twentyeighth/call2.sh
# (1) compile old / u / ui (bf16 fwd90 + bwd90, plain, causal, varlen, varlen causal);
# (2) round 1: fwd_grid_ab.py d64 / d128 at 512, 1050, 4096 rows (16k tokens) beside SDPA cuDNN for old, u,
#     ui; cuflash bench --varlen mix for old and ui; the backward d64 / d128 / d256 2k beside SDPA cuDNN for
#     old and u (ui's backward is u's);
# (3) the float64 check (idle_check.py) on ui;
# (4) more rounds of the dense A/B in reverse order (ui, u, old) while time is left;
# (5) what is left, on ui: the forward, varlen and sm90 backward GPU tests, compute-sanitizer memcheck and
#     racecheck of idle_sanitize.py and uniform_sanitize.py.
. bench/call_lib.sh
C=bench/results/2026-12-07-twentyseventh
N=bench/results/2026-12-07-twentyeighth
make_tree u kernels_cu/dev/sm90_uniform_warpgroup.patch
make_tree ui kernels_cu/dev/sm90_uniform_warpgroup.patch kernels_cu/dev/fwd90_idle_walk_uniform.patch
for lab in old u ui; do
  compile_tree $lab --features "" --features causal --features varlen --features varlen,causal --dtypes bf16 \
    --only fwd90_bf16 --only bwd90_bf16 -j 5 &
done
wait $(others)
echo "compiled at $SECONDS s" >> $R/times.txt
for lab in old u ui; do [ $(left) -gt 60 ] || break
  t=$(tree $lab)
  dense $lab
  [ $lab != u ] && [ $(left) -gt 60 ] && (cd $t && PYTHONPATH=$t CUFLASH_CACHE_DIR=/tmp/cc-$lab timeout 45 python3 -m cuflash bench \
     --mode fwd --varlen mix --seqlen 8k --headdim 64,128 --causal both --peers none --no-check --no-progress 2>&1 \
     | sed "s/^/$lab /" | tee -a $R/varlen.txt | grep -E " fwd ")
  [ $lab != ui ] && [ $(left) -gt 60 ] && (cd $t && PYTHONPATH=$t CUFLASH_CACHE_DIR=/tmp/cc-$lab timeout 75 python3 -m cuflash bench \
     --mode bwd --seqlen 2k --headdim 64,128,256 --causal both --peers sdpa-cudnn --no-check --no-progress 2>&1 \
     | sed "s/^/$lab /" | tee -a $R/bwd.txt | grep -E " bwd ")
done
echo "round 1 done at $SECONDS s" >> $R/times.txt
L=$(( $(left) - 10 )); [ $L -gt 150 ] && L=150
[ $L -gt 20 ] && (cd /tmp/ui && PYTHONPATH=/tmp/ui CUFLASH_CACHE_DIR=/tmp/cc-ui timeout $L python3 $C/idle_check.py 2>&1 \
   | tee $R/check.txt | grep -E "FAIL|failures")
echo "check done at $SECONDS s" >> $R/times.txt
for r in 2 3; do for lab in ui u old; do [ $(left) -gt 120 ] || break 2; dense $lab; done; done
L=$(( $(left) - 15 ))
if [ $L -gt 60 ]; then
  cd /tmp/ui
  export PYTHONPATH=/tmp/ui CUFLASH_CACHE_DIR=/tmp/cc-ui OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2
  timeout $L python3 -m pytest tests/gpu/test_forward.py -q -x -p no:cacheprovider > $R/t-forward.log 2>&1 &
  timeout $L python3 -m pytest tests/gpu/test_varlen.py tests/gpu/test_packed.py -q -x -p no:cacheprovider > $R/t-varlen.log 2>&1 &
  timeout $L python3 -m pytest tests/gpu/test_backward.py -k sm90 -q -x -p no:cacheprovider > $R/t-backward.log 2>&1 &
  (for tool in memcheck racecheck; do for s in $C/idle_sanitize.py $N/uniform_sanitize.py; do
     timeout $(( L / 4 )) compute-sanitizer --tool $tool --error-exitcode 9 python3 $s > $R/$tool-$(basename $s .py).log 2>&1
     echo "rc=$?" >> $R/$tool-$(basename $s .py).log; done; done) &
  wait $(others)
fi
for f in $R/t-*.log $R/memcheck-*.log $R/racecheck-*.log; do [ -f $f ] && { echo "== $f"; tail -n 2 $f; }; done
finish
