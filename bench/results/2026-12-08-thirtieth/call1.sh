# Written in the twenty-ninth session for the next (bench/NOTES.md v40): the half diagonal
# (kernels_cu/dev/fwd90_half_diagonal.patch, "h") against HEAD ("old", which has v39 landed), and the GPU tests of
# both that the twenty-ninth session's call 2 could not run. From the repo root:
#   DEADLINE=<the call's limit less 30 s> bash bench/results/next-thirtieth/call1.sh
# (1) compile old / h (bf16 fwd90: causal, window, varlen causal);
# (2) round 1: fwd_grid_ab.py d64 / d128 at 512, 1050, 2048, 4096 rows (16k tokens) beside SDPA cuDNN (the
#     non-causal rows run the same kernels in both trees: the run's noise), then cuflash bench --varlen mix causal;
# (3) the float64 check (half_check.py) on h;
# (4) on h: the sm90 GPU tests (call_lib.sh sm90_tests; they cover v39 too, which the twenty-ninth session's
#     call 2 did not get to run) for at most 240 s, compute-sanitizer memcheck and racecheck of half_sanitize.py
#     beside them;
# (5) a second round of the dense A/B in reverse order;
# (6) Nsight Compute of d64 512 causal (kernels_cu/dev/ncu_short.py, cuDNN beside) on HEAD and on "u", HEAD with
#     the warpgroup index uniform on d64's two-consumer tiles too (kernels_cu/dev/fwd90_uniform_two_consumers.patch):
#     why that measured 2-6% slower there (bench/NOTES.md v39), stall reasons and instruction mix side by side.
# Logs under /tmp/r -> $OUT/r.tgz (bench/call_lib.sh). If it wins: apply the patch in kernels_cu, delete it from
# kernels_cu/dev, NOTES v40's outcome, README's speed rows, CI.
. bench/call_lib.sh
H=bench/results/next-thirtieth
make_tree h kernels_cu/dev/fwd90_half_diagonal.patch
make_tree u kernels_cu/dev/fwd90_uniform_two_consumers.patch
for lab in old h; do
  compile_tree $lab --features causal --features window --features varlen,causal --dtypes bf16 --only fwd90_bf16 -j 6 &
done
compile_tree u --features causal --dtypes bf16 --only fwd90_bf16_d64 -j 4 &
wait $(others)
echo "compiled at $SECONDS s" >> $R/times.txt
varlen() { t=$(tree $1)
  (cd $t && PYTHONPATH=$t CUFLASH_CACHE_DIR=/tmp/cc-$1 timeout 45 python3 -m cuflash bench --mode fwd --varlen mix \
     --seqlen 2k,8k --headdim 64,128 --causal yes --peers none --no-check --no-progress 2>&1 | sed "s/^/$1 /" \
     | tee -a $R/varlen.txt | grep -E " fwd ") }
for lab in old h; do [ $(left) -gt 60 ] || break; dense $lab 512,1050,2048,4096 75; [ $(left) -gt 60 ] && varlen $lab; done
echo "round 1 done at $SECONDS s" >> $R/times.txt
L=$(( $(left) - 10 )); [ $L -gt 120 ] && L=120
[ $L -gt 20 ] && (cd /tmp/h && PYTHONPATH=/tmp/h CUFLASH_CACHE_DIR=/tmp/cc-h timeout $L python3 $H/half_check.py 2>&1 \
   | tee $R/check.txt | grep -E "FAIL|failures")
echo "check done at $SECONDS s" >> $R/times.txt
L=$(( $(left) - 150 )); [ $L -gt 240 ] && L=240
if [ $L -gt 60 ]; then
  (cd /tmp/h && for tool in memcheck racecheck; do
     PYTHONPATH=/tmp/h CUFLASH_CACHE_DIR=/tmp/cc-h timeout $(( L / 3 )) compute-sanitizer --tool $tool --error-exitcode 9 \
       python3 $H/half_sanitize.py > $R/$tool-half.log 2>&1; echo "rc=$?" >> $R/$tool-half.log; done) &
  (cd /tmp/h && CUFLASH_CACHE_DIR=/tmp/cc-h sm90_tests $(( L - 5 )))
  wait $(others)
fi
for lab in h old; do [ $(left) -gt 80 ] || break; dense $lab 512,1050,2048,4096 75; done
echo "round 2 done at $SECONDS s" >> $R/times.txt
for lab in old u; do [ $(left) -gt 70 ] || break; t=$(tree $lab)
  (cd $t && PYTHONPATH=$t CUFLASH_CACHE_DIR=/tmp/cc-$lab CASES=64:512:1 timeout 60 ncu --profile-from-start off \
     --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section InstructionStats \
     python3 kernels_cu/dev/ncu_short.py > $R/ncu-$lab.txt 2>&1); done
echo "ncu done at $SECONDS s" >> $R/times.txt
for f in $R/*-half.log; do [ -f $f ] && { echo "== $f"; tail -n 2 $f; }; done
finish
