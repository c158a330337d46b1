#!/usr/bin/env bash
# Call 3 on the branch `pending`: call 2's bias A/B again, each tree run from its own folder (call 2 ran
# `python3 -m cuflash` from the repo root, which imports the root's host code, so main's kernels met this
# branch's compile defines and failed to compile). Forward d128 and backward d64, bf16, 8k, batch 2.
set -u
export PYTHONUNBUFFERED=1
o=$OUT
root=$PWD
pack() { tar -czf $OUT/logs.tgz -C $o --exclude logs.tgz . 2>/dev/null; }
for shape in b,h,s,s 1,h,s,s b,1,1,s; do
  for tree in . ab/main; do
    name=$([ $tree = . ] && echo staged || echo main)
    (cd $root/$tree && PYTHONPATH=. CUFLASH_CACHE_DIR=/tmp/cc3-$name timeout 100 python3 -m cuflash bench \
      --mode fwd --headdim 128 --seqlen 8k --batch 2 --nheads 16 --causal both --bias $shape --peers sdpa-cudnn \
      --no-progress > $o/fwd128-$name-${shape//,/}.txt 2>&1)
    (cd $root/$tree && PYTHONPATH=. CUFLASH_CACHE_DIR=/tmp/cc3-$name timeout 100 python3 -m cuflash bench \
      --mode bwd --headdim 64 --seqlen 8k --batch 2 --nheads 32 --causal both --bias $shape --peers none \
      --no-progress > $o/bwd64-$name-${shape//,/}.txt 2>&1)
    pack
  done
done
grep -h -E "bias\(|raised" $o/*.txt
