# Twenty-ninth session, call 2 (never ran: the device machines did not start again, and the session's device time
# ran out): the GPU tests of the Hopper kernels on the tree with v39 landed (bench/NOTES.md v39), which call 1 cut
# short, and the sanitizers' case file on the default (sm_90a) kernels. From the repo root:
#   DEADLINE=<the call's limit less 30 s> bash bench/results/2026-12-07-twentyninth/call2.sh
# SANITIZE=0 leaves the sanitizers out (call 1 ran both on the same kernels). The tests: call_lib.sh sm90_tests.
# next-thirtieth/call1.sh runs the same tests on a tree that holds these kernels.
. bench/call_lib.sh
export CUFLASH_CACHE_DIR=/tmp/cc
python3 -m cuflash compile --arch sm_90a --features "" --features causal --features varlen --features varlen,causal \
  --only fwd90_ --only bwd90_ -j 12 > $R/compile.log 2>&1
echo "compiled at $SECONDS s" >> $R/times.txt
L=$(( $(left) - 30 ))
[ "${SANITIZE:-1}" = 1 ] && ( for tool in memcheck racecheck; do
  SANITIZER_TOOL=$tool timeout $(( L / 2 )) compute-sanitizer --tool $tool --error-exitcode 9 \
    python3 bench/sanitize_case.py > $R/$tool-case.log 2>&1; echo "rc=$?" >> $R/$tool-case.log; done ) &
sm90_tests $L
wait $(others)
for f in $R/*check-case.log; do [ -f $f ] && { echo "== $f"; tail -n 2 $f; }; done
finish
