# Written in the twenty-eighth session for the next (bench/NOTES.md v39): the warpgroup index made warp-uniform
# only where one round measured it faster (kernels_cu/dev/sm90_uniform_warpgroup_b.patch, "b"), and with the
# idle walk on top (kernels_cu/dev/fwd90_idle_walk_uniform_b.patch, "ib"), against HEAD ("old"). From the repo root:
#   DEADLINE=<the call's limit less 30 s> bash bench/results/next-twentyninth/call1.sh
# (1) compile old / b / ib (bf16 fwd90 + bwd90: plain, causal, varlen, varlen causal);
# (2) round 1: fwd_grid_ab.py d64 / d128 at 512, 1050, 4096 rows (16k tokens) beside SDPA cuDNN, then
#     cuflash bench --varlen mix d64 / d128, for old, b, ib; the backward d64 2k beside SDPA cuDNN for old and
#     b (b changes the backward at d64 only; ib's backward is b's);
# (3) the float64 check (2026-12-07-twentyseventh/idle_check.py) on ib;
# (4) more rounds of the dense A/B in reverse order (ib, b, old) and the backward while time is left;
# (5) what is left, on ib: the forward, varlen and sm90 backward GPU tests, compute-sanitizer memcheck and
#     racecheck of idle_sanitize.py and uniform_sanitize.py.
# Logs under /tmp/r -> $OUT/r.tgz (bench/call_lib.sh). If it wins: apply the patch(es) in kernels_cu, delete
# them from kernels_cu/dev, NOTES v39's outcome, README's speed rows, CI.
. bench/call_lib.sh
C=bench/results/2026-12-07-twentyseventh
N=bench/results/2026-12-07-twentyeighth
make_tree b kernels_cu/dev/sm90_uniform_warpgroup_b.patch
make_tree ib kernels_cu/dev/sm90_uniform_warpgroup_b.patch kernels_cu/dev/fwd90_idle_walk_uniform_b.patch
for lab in old b ib; do
  compile_tree $lab --features "" --features causal --features varlen --features varlen,causal --dtypes bf16 \
    --only fwd90_bf16 --only bwd90_bf16 -j 5 &
done
wait $(others)
echo "compiled at $SECONDS s" >> $R/times.txt
bwd() { t=$(tree $1)
  (cd $t && PYTHONPATH=$t CUFLASH_CACHE_DIR=/tmp/cc-$1 timeout 45 python3 -m cuflash bench --mode bwd --seqlen 2k \
     --headdim 64 --causal both --peers sdpa-cudnn --no-check --no-progress 2>&1 | sed "s/^/$1 /" | tee -a $R/bwd.txt | grep -E " bwd "); }
for lab in old b ib; do [ $(left) -gt 60 ] || break
  t=$(tree $lab)
  dense $lab
  [ $(left) -gt 60 ] && (cd $t && PYTHONPATH=$t CUFLASH_CACHE_DIR=/tmp/cc-$lab timeout 45 python3 -m cuflash bench \
     --mode fwd --varlen mix --seqlen 8k --headdim 64,128 --causal both --peers none --no-check --no-progress 2>&1 \
     | sed "s/^/$lab /" | tee -a $R/varlen.txt | grep -E " fwd ")
  [ $lab != ib ] && [ $(left) -gt 60 ] && bwd $lab
done
echo "round 1 done at $SECONDS s" >> $R/times.txt
L=$(( $(left) - 10 )); [ $L -gt 150 ] && L=150
[ $L -gt 20 ] && (cd /tmp/ib && PYTHONPATH=/tmp/ib CUFLASH_CACHE_DIR=/tmp/cc-ib timeout $L python3 $C/idle_check.py 2>&1 \
   | tee $R/check.txt | grep -E "FAIL|failures")
echo "check done at $SECONDS s" >> $R/times.txt
for r in 2 3; do for lab in ib b old; do [ $(left) -gt 120 ] || break 2; dense $lab; [ $lab != ib ] && bwd $lab; done; done
L=$(( $(left) - 15 ))
if [ $L -gt 60 ]; then
  cd /tmp/ib
  export PYTHONPATH=/tmp/ib CUFLASH_CACHE_DIR=/tmp/cc-ib OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2
  timeout $L python3 -m pytest tests/gpu/test_forward.py -q -x -p no:cacheprovider > $R/t-forward.log 2>&1 &
  timeout $L python3 -m pytest tests/gpu/test_varlen.py tests/gpu/test_packed.py -q -x -p no:cacheprovider > $R/t-varlen.log 2>&1 &
  timeout $L python3 -m pytest tests/gpu/test_backward.py -k sm90 -q -x -p no:cacheprovider > $R/t-backward.log 2>&1 &
  timeout $L python3 -m pytest tests/gpu/test_variants.py -k sm90 -q -x -p no:cacheprovider > $R/t-variants.log 2>&1 &
  (for tool in memcheck racecheck; do for s in $C/idle_sanitize.py $N/uniform_sanitize.py; do
     timeout $(( L / 4 )) compute-sanitizer --tool $tool --error-exitcode 9 python3 $s > $R/$tool-$(basename $s .py).log 2>&1
     echo "rc=$?" >> $R/$tool-$(basename $s .py).log; done; done) &
  wait $(others)
fi
for f in $R/t-*.log $R/memcheck-*.log $R/racecheck-*.log; do [ -f $f ] && { echo "== $f"; tail -n 2 $f; }; done
finish
