#!/usr/bin/env bash
# Call 2 for the branch bias-ws (bench/NOTES.md v26): README's bias table (bf16, d128, 8k, batch 2, 16 heads,
# forward) and the d64 backward, this tree against main's (ab/main, made before the call: mkdir -p ab/main &&
# git archive main | tar -x -C ab/main; it is untracked, so it travels with the working tree).
set -u
export PYTHONUNBUFFERED=1
o=$OUT
pack() { tar -czf $OUT/logs.tgz -C $o --exclude logs.tgz . 2>/dev/null; }
for shape in b,h,s,s 1,h,s,s b,1,1,s; do
  for tree in . ab/main; do
    name=$([ $tree = . ] && echo staged || echo main)
    PYTHONPATH=$tree CUFLASH_KERNELS_DIR=$tree/kernels_cu CUFLASH_CACHE_DIR=/tmp/cc-$name timeout 120 python3 -m cuflash bench \
      --mode fwd --headdim 128 --seqlen 8k --batch 2 --nheads 16 --causal both --bias $shape --peers sdpa-cudnn \
      --no-progress > $o/bench-$name-${shape//,/}.txt 2>&1
    pack
  done
done
# The backward at d64 (bwd_sm90_ws.cu with the staged bias), same shapes, against main's bwd_sm90.cu.
for shape in b,h,s,s 1,h,s,s b,1,1,s; do
  for tree in . ab/main; do
    name=$([ $tree = . ] && echo staged || echo main)
    PYTHONPATH=$tree CUFLASH_KERNELS_DIR=$tree/kernels_cu CUFLASH_CACHE_DIR=/tmp/cc-$name timeout 120 python3 -m cuflash bench \
      --mode bwd --headdim 64 --seqlen 8k --batch 2 --nheads 32 --causal both --bias $shape --peers none \
      --no-progress > $o/bench-bwd64-$name-${shape//,/}.txt 2>&1
    pack
  done
done
tail -n 8 $o/bench-*.txt
