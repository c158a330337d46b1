# bench/call_lib.sh: the start of a device call script (bench/results/*/call*.sh), sourced from the repo root:
#   . bench/call_lib.sh
# Logs go under $R (/tmp/r), archived to $OUT/r.tgz every 15 s, so a call cut by its time limit still
# returns what it wrote. left: the seconds to $DEADLINE (default 540; the call's limit less ~30 s);
# others: the pids of the background jobs but the packer (wait $(others)); finish: the last archive.
# $R/gpu.txt names the card and its clock.
export PYTHONUNBUFFERED=1
DEADLINE=${DEADLINE:-540}
left() { echo $((DEADLINE - SECONDS)); }
R=/tmp/r
rm -rf $R && mkdir -p $R
pack() { tar -czf $OUT/r.tmp.tgz -C $R . && mv $OUT/r.tmp.tgz $OUT/r.tgz; }
( while sleep 15; do pack; done ) &
packer=$!
others() { jobs -p | grep -v "^$packer$"; }
finish() { kill $packer; pack; }
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader > $R/gpu.txt 2>&1
# tree LAB: the source tree of label LAB, the repo ("old") or /tmp/LAB; make_tree LAB PATCH...: /tmp/LAB as a
# copy of the repo with the patches applied in order (each named in $R/patched.txt); compile_tree LAB
# ARGS...: `cuflash compile ARGS` in LAB's tree into /tmp/cc-LAB, its log $R/compile-LAB.log (run them with
# & and wait $(others) to compile the trees side by side).
tree() { case $1 in old) echo $PWD ;; *) echo /tmp/$1 ;; esac; }
make_tree() { local lab=$1 p; shift
  rm -rf /tmp/$lab && mkdir /tmp/$lab && cp -r cuflash kernels_cu tests bench pyproject.toml /tmp/$lab/
  for p in "$@"; do (cd /tmp/$lab && patch -p1 -s < $p && echo "$lab: $p" >> $R/patched.txt); done; }
compile_tree() { local lab=$1 t; shift; t=$(tree $lab)
  (cd $t && PYTHONPATH=$t CUFLASH_CACHE_DIR=/tmp/cc-$lab timeout 120 python3 -m cuflash compile "$@" > $R/compile-$lab.log 2>&1); }
# dense LAB [SEQLENS] [SECONDS]: kernels_cu/dev/fwd_grid_ab.py in LAB's tree, d64 and d128 at SEQLENS query rows
# (default 512,1050,4096; 16k tokens) beside SDPA cuDNN, for at most SECONDS (60), appended to $R/dense.txt.
dense() { local t; t=$(tree $1)
  (cd $t && PYTHONPATH=$t CUFLASH_CACHE_DIR=/tmp/cc-$1 SEQLENS=${2:-512,1050,4096} PEER=cudnn timeout ${3:-60} python3 \
     kernels_cu/dev/fwd_grid_ab.py $1 64,128 2>&1 | tee -a $R/dense.txt); }
# sharded_tests SECONDS PYTEST_ARGS...: the tests that PYTEST_ARGS collect, in their order, dealt round-robin to
# ${SHARDS:-12} pytest processes run for at most SECONDS in the current directory's tree (its CUFLASH_CACHE_DIR
# as set by the caller), so that a cut call still covers every file; logs $R/t-shardK.log. Ids with spaces (which
# the command line would split) run as their test functions, every parameter, in $R/t-spaced.log. The float64
# reference is CPU-bound: one OpenMP thread per process. Returns when all have ended.
sharded_tests() { local L=$1 k n=${SHARDS:-12} ids; shift
  export PYTHONPATH=$PWD OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
  python3 -m pytest "$@" --collect-only -q -p no:cacheprovider 2>/dev/null | grep :: > $R/ids-all.txt
  grep -v " " $R/ids-all.txt > /tmp/ids.txt
  echo "$(wc -l < $R/ids-all.txt) tests collected at $SECONDS s" >> $R/times.txt
  local pids=()
  for k in $(seq 0 $((n - 1))); do
    awk -v k=$k -v s=$n 'NR % s == k' /tmp/ids.txt > /tmp/shard$k
    mapfile -t ids < /tmp/shard$k
    [ ${#ids[@]} -gt 0 ] && { timeout $L python3 -m pytest "${ids[@]}" -q -rfE -p no:cacheprovider > $R/t-shard$k.log 2>&1 & pids+=($!); }
  done
  mapfile -t ids < <(grep " " $R/ids-all.txt | cut -d[ -f1 | sort -u)
  [ ${#ids[@]} -gt 0 ] && { timeout $L python3 -m pytest "${ids[@]}" -q -rfE -p no:cacheprovider > $R/t-spaced.log 2>&1 & pids+=($!); }
  wait "${pids[@]}"
  echo "tests done at $SECONDS s" >> $R/times.txt
  for k in $R/t-shard*.log $R/t-spaced.log; do [ -f $k ] && echo "== $k: $(tail -n 1 $k)"; done
  grep -h -E "^(FAILED|ERROR)" $R/t-shard*.log $R/t-spaced.log 2>/dev/null | head -40; }
# sm90_tests SECONDS: the sm90 GPU tests of the files that a Hopper kernel change touches (the least reached by
# earlier calls first), and test_packed.py, through sharded_tests.
sm90_tests() { sharded_tests $1 tests/gpu/test_bias.py tests/gpu/test_dropout.py tests/gpu/test_variants.py \
  tests/gpu/test_varlen.py tests/gpu/test_forward.py tests/gpu/test_backward.py tests/gpu/test_packed.py \
  -k "sm90 or test_packed"; }
# varlen_mix LAB CAUSAL: cuflash bench --varlen mix (2k and 8k, d64 and d128, --causal CAUSAL: true | false | both)
# in LAB's tree, at most 45 s, appended to $R/varlen.txt with the label; the fwd rows echoed.
varlen_mix() { local t; t=$(tree $1)
  (cd $t && PYTHONPATH=$t CUFLASH_CACHE_DIR=/tmp/cc-$1 timeout 45 python3 -m cuflash bench --mode fwd --varlen mix \
     --seqlen 2k,8k --headdim 64,128 --causal $2 --peers none --no-check --no-progress 2>&1 | sed "s/^/$1 /" \
     | tee -a $R/varlen.txt | grep -E " fwd "); }
# tests_and_sanitize LAB SCRIPT SECONDS: in LAB's tree, sm90_tests for SECONDS beside compute-sanitizer memcheck,
# then racecheck, of python3 SCRIPT (a third of SECONDS each; logs $R/memcheck-NAME.log, $R/racecheck-NAME.log
# with SCRIPT's base name, "rc=" last). Returns when both have ended.
tests_and_sanitize() { local t name; t=$(tree $1); name=$(basename $2 .py)
  (cd $t && for tool in memcheck racecheck; do
     PYTHONPATH=$t CUFLASH_CACHE_DIR=/tmp/cc-$1 timeout $(( $3 / 3 )) compute-sanitizer --tool $tool --error-exitcode 9 \
       python3 $2 > $R/$tool-$name.log 2>&1; echo "rc=$?" >> $R/$tool-$name.log; done) &
  (cd $t && CUFLASH_CACHE_DIR=/tmp/cc-$1 sm90_tests $(( $3 - 5 )))
  wait $(others); }
# float64_check LAB SCRIPT [SECONDS]: python3 SCRIPT (a float64 check, bench/float64_cases.py) in LAB's tree for at
# most SECONDS (150; less when the call's time runs short, none under 20 s), log $R/check.txt, its FAIL lines and
# failure count echoed.
float64_check() { local t L; t=$(tree $1); L=$(( $(left) - 10 )); [ $L -gt ${3:-150} ] && L=${3:-150}
  [ $L -gt 20 ] && (cd $t && PYTHONPATH=$t CUFLASH_CACHE_DIR=/tmp/cc-$1 timeout $L python3 $2 2>&1 | tee $R/check.txt \
     | grep -E "FAIL|failures")
  echo "check done at $SECONDS s" >> $R/times.txt; }
