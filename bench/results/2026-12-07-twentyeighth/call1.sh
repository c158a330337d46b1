# Written in the twenty-seventh session for the next (bench/NOTES.md v39): the warp-specialised forward's
# warpgroup index made warp-uniform (kernels_cu/dev/sm90_uniform_warpgroup.patch), alone ("u") and with
# v38's idle walk on top (kernels_cu/dev/fwd90_idle_walk_uniform.patch, "ui"), against HEAD ("old"). From the repo root:
#   DEADLINE=<the call's limit less 30 s> bash bench/results/2026-12-07-twentyeighth/call1.sh
# One call of 570 s holds the check, about two A/B rounds and a little of (3); with two calls, run the first
# with ROUNDS=2 DEADLINE=...: the tests and sanitizers then get what is left, or a second call with ROUNDS=0.
# (1) the float64 check (2026-12-07-twentyseventh/idle_check.py) on the ui tree (it holds both changes);
# (2) A/B/C, alternated rounds while time is left: kernels_cu/dev/fwd_grid_ab.py d64 / d128 at 512, 1050,
#     4096 rows (16k tokens) beside SDPA cuDNN; round 1 also cuflash bench --varlen mix d64 / d128, causal both;
#     old and u also cuflash bench --mode bwd d64 / d128 / d256 at 2k beside SDPA cuDNN (the backward's change);
# (3) what time is left, on the ui tree: the forward and sm90 backward GPU tests, compute-sanitizer memcheck and
#     racecheck of idle_sanitize.py (the warp-specialised forward) and uniform_sanitize.py (the backwards, and
#     fwd_sm90.cu through a float32 bias); test_bias.py for fwd_sm90.cu.
# Logs under /tmp/r -> $OUT/r.tgz (bench/call_lib.sh).
. bench/call_lib.sh
C=bench/results/2026-12-07-twentyseventh
N=bench/results/2026-12-07-twentyeighth
tree() { case $1 in old) echo $PWD ;; *) echo /tmp/$1 ;; esac; }
for lab in u ui; do
  rm -rf /tmp/$lab && mkdir /tmp/$lab && cp -r cuflash kernels_cu tests bench pyproject.toml /tmp/$lab/
  (cd /tmp/$lab && patch -p1 -s < kernels_cu/dev/sm90_uniform_warpgroup.patch && echo "$lab: uniform" >> $R/patched.txt)
  [ $lab = ui ] && (cd /tmp/ui && patch -p1 -s < kernels_cu/dev/fwd90_idle_walk_uniform.patch && echo "ui: idle walk" >> $R/patched.txt)
done
for lab in old u ui; do t=$(tree $lab)
  (cd $t && PYTHONPATH=$t CUFLASH_CACHE_DIR=/tmp/cc-$lab timeout 120 python3 -m cuflash compile --features "" \
     --features causal --features varlen --features varlen,causal --dtypes bf16 --only fwd90_bf16 --only bwd90_bf16 -j 5 > $R/compile-$lab.log 2>&1) &
done
wait $(others)
(cd /tmp/ui && PYTHONPATH=/tmp/ui CUFLASH_CACHE_DIR=/tmp/cc-ui timeout 150 python3 $C/idle_check.py 2>&1 \
   | tee $R/check.txt | grep -E "FAIL|failures")
AB=kernels_cu/dev/fwd_grid_ab.py
for r in $(seq 1 ${ROUNDS:-3}); do for lab in old u ui; do [ $(left) -gt 150 ] || break 2
  t=$(tree $lab)
  (cd $t && PYTHONPATH=$t CUFLASH_CACHE_DIR=/tmp/cc-$lab SEQLENS=512,1050,4096 PEER=cudnn timeout 60 python3 \
     $AB $lab 64,128 2>&1 | tee -a $R/dense.txt)
  [ $r = 1 ] && (cd $t && PYTHONPATH=$t CUFLASH_CACHE_DIR=/tmp/cc-$lab timeout 60 python3 -m cuflash bench --mode fwd \
     --varlen mix --seqlen 8k --headdim 64,128 --causal both --peers none --no-check --no-progress 2>&1 \
     | sed "s/^/$lab r$r /" | tee -a $R/varlen.txt | grep -E " fwd ")
  # the backward (bwd_sm90_ws.cu and bwd_sm90.cu take the same change; ui's backward is u's)
  [ $lab != ui ] && (cd $t && PYTHONPATH=$t CUFLASH_CACHE_DIR=/tmp/cc-$lab timeout 90 python3 -m cuflash bench --mode bwd \
     --seqlen 2k --headdim 64,128,256 --causal both --peers sdpa-cudnn --no-check --no-progress 2>&1 \
     | sed "s/^/$lab r$r /" | tee -a $R/bwd.txt | grep -E " bwd ")
done; done
L=$(( $(left) - 15 ))
if [ $L -gt 60 ]; then
  cd /tmp/ui
  export PYTHONPATH=/tmp/ui CUFLASH_CACHE_DIR=/tmp/cc-ui OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2
  timeout $L python3 -m pytest tests/gpu/test_forward.py -q -x -p no:cacheprovider > $R/t-forward.log 2>&1 &
  timeout $L python3 -m pytest tests/gpu/test_varlen.py tests/gpu/test_packed.py -q -x -p no:cacheprovider > $R/t-varlen.log 2>&1 &
  timeout $L python3 -m pytest tests/gpu/test_variants.py -k sm90 -q -x -p no:cacheprovider > $R/t-variants.log 2>&1 &
  timeout $L python3 -m pytest tests/gpu/test_bias.py -q -x -p no:cacheprovider > $R/t-bias.log 2>&1 &
  timeout $L python3 -m pytest tests/gpu/test_backward.py -k sm90 -q -x -p no:cacheprovider > $R/t-backward.log 2>&1 &
  (for tool in memcheck racecheck; do for s in $C/idle_sanitize.py $N/uniform_sanitize.py; do
     timeout $(( L / 4 )) compute-sanitizer --tool $tool --error-exitcode 9 python3 $s > $R/$tool-$(basename $s .py).log 2>&1
     echo "rc=$?" >> $R/$tool-$(basename $s .py).log; done; done) &
  wait $(others)
fi
for f in $R/t-*.log $R/memcheck-*.log $R/racecheck-*.log; do echo "== $f"; tail -n 2 $f; done
finish
