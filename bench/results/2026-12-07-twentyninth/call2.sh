# Twenty-ninth session, call 2: the GPU tests of the Hopper kernels on the tree with v39 landed (the warpgroup
# index warp-uniform where it paid and the idle walk on top; bench/NOTES.md v39), which call 1 cut short, then
# the sanitizers' case file on the default (sm_90a) kernels (SANITIZE=0 leaves it out: call 1 ran both
# sanitizers on the same kernels). From the repo root:
#   DEADLINE=<the call's limit less 30 s> bash bench/results/2026-12-07-twentyninth/call2.sh
# The sm90 tests of the files the change touches (bias, dropout, variants, varlen, forward, backward, in the
# order call 1 reached least of them first; then packed) are collected once and dealt round-robin to 12 pytest processes (the float64 reference is CPU-bound; one
# OpenMP thread each; the ids with spaces run by -k), so that a cut call still covers every file. Logs under /tmp/r -> $OUT/r.tgz.
. bench/call_lib.sh
export PYTHONPATH=$PWD CUFLASH_CACHE_DIR=/tmp/cc OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
python3 -m cuflash compile --arch sm_90a --features "" --features causal --features varlen --features varlen,causal \
  --only fwd90_ --only bwd90_ -j 12 > $R/compile.log 2>&1
echo "compiled at $SECONDS s" >> $R/times.txt
python3 -m pytest tests/gpu/test_bias.py tests/gpu/test_dropout.py tests/gpu/test_variants.py tests/gpu/test_varlen.py \
  tests/gpu/test_forward.py tests/gpu/test_backward.py -k sm90 --collect-only -q -p no:cacheprovider 2>/dev/null \
  | grep :: | grep -v " " > $R/ids.txt
python3 -m pytest tests/gpu/test_packed.py --collect-only -q -p no:cacheprovider 2>/dev/null | grep :: >> $R/ids.txt
echo "$(wc -l < $R/ids.txt) tests collected at $SECONDS s" >> $R/times.txt
S=12
for k in $(seq 0 $((S - 1))); do awk -v k=$k -v s=$S 'NR % s == k' $R/ids.txt > /tmp/shard$k; done
L=$(( $(left) - 30 ))
for k in $(seq 0 $((S - 1))); do
  mapfile -t ids < /tmp/shard$k
  timeout $L python3 -m pytest "${ids[@]}" -q -rfE -p no:cacheprovider > $R/t-shard$k.log 2>&1 &
done
# the ids with spaces (test_varlen's bad-input messages), by -k
timeout $L python3 -m pytest tests/gpu/test_varlen.py -k "sm90 and bad_varlen" -q -rfE -p no:cacheprovider > $R/t-shard-bad.log 2>&1 &
[ "${SANITIZE:-1}" = 1 ] && ( SANITIZER_TOOL=memcheck timeout $(( L / 2 )) compute-sanitizer --tool memcheck --error-exitcode 9 \
    python3 bench/sanitize_case.py > $R/memcheck-case.log 2>&1; echo "rc=$?" >> $R/memcheck-case.log
  SANITIZER_TOOL=racecheck timeout $(( L / 2 )) compute-sanitizer --tool racecheck --error-exitcode 9 \
    python3 bench/sanitize_case.py > $R/racecheck-case.log 2>&1; echo "rc=$?" >> $R/racecheck-case.log ) &
wait $(others)
echo "tests done at $SECONDS s" >> $R/times.txt
for f in $R/t-shard*.log; do echo "== $f: $(tail -n 1 $f)"; done
grep -h -E "^(FAILED|ERROR)" $R/t-shard*.log | head -40
for f in $R/*check-case.log; do echo "== $f"; tail -n 2 $f; done
finish
