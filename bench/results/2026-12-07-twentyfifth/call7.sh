# Twenty-fifth session, call 7: ncu_per_key.py on HEAD's kernels (head.tgz: the per-key add per score) and on
# this tree's (k-step + lean producer), instructions by opcode for both.
export PYTHONUNBUFFERED=1
D=$PWD/bench/results/2026-12-07-twentyfifth
rm -rf /tmp/b && mkdir -p /tmp/b && tar -xzf $D/head.tgz -C /tmp/b
for t in b k2; do
  dir=$([ $t = b ] && echo /tmp/b || echo $PWD)
  (cd $dir && PYTHONPATH=$dir CUFLASH_CACHE_DIR=/tmp/cc-$t timeout 100 ncu --profile-from-start off --section SpeedOfLight \
    --section WarpStateStats --section InstructionStats --metrics sass__inst_executed_per_opcode \
    --print-metric-instances values python3 $D/ncu_per_key.py > $OUT/ncu-$t.txt 2>&1; echo "$t rc $?")
  grep -E "case|Duration|Executed Instructions  |sass__inst_executed_per_opcode" $OUT/ncu-$t.txt | cut -c1-600
done
