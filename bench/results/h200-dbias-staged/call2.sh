#!/usr/bin/env bash
# Call 2 on the branch `dbias-staged`: its timings against main's kernels (ab/main, made before the call with
# `mkdir -p ab/main && git archive main | tar -x -C ab/main`), each tree run from its own folder (`python3 -m`
# imports the host code of the folder it runs in). bf16, 8k, batch 2. Forward d128, 16 heads, SDPA cuDNN beside
# it: main, and this branch with the L2 prefetch 2 blocks ahead (default) and off (CUFLASH_BIAS_AHEAD=0), and
# for the (1, h, s, s) bias with heads before batches in the tile order (CUFLASH_BIAS_BATCH_ORDER=0).
# Backward with dbias, d64 32 heads and d128 16 heads: main (d128 on bwd_sm90.cu) and this branch.
set -u
export PYTHONUNBUFFERED=1
o=$OUT
root=$PWD
pack() { tar -czf $OUT/logs.tgz -C $o --exclude logs.tgz . 2>/dev/null; }
run() {  # run NAME TREE EXTRA_NVRTC_OPTIONS bench-args...
  local name=$1 tree=$2 opts=$3; shift 3
  (cd $root/$tree && PYTHONPATH=. CUFLASH_NVRTC_OPTIONS="$opts" CUFLASH_CACHE_DIR=/tmp/cc2-$name timeout 100 \
    python3 -m cuflash bench --seqlen 8k --batch 2 --causal both --no-progress "$@")
}
for shape in b,h,s,s 1,h,s,s b,1,1,s; do
  s=${shape//,/}
  run main ab/main "" --mode fwd --headdim 128 --nheads 16 --bias $shape --peers sdpa-cudnn > $o/fwd128-main-$s.txt 2>&1
  run ahead2 . "" --mode fwd --headdim 128 --nheads 16 --bias $shape --peers sdpa-cudnn > $o/fwd128-ahead2-$s.txt 2>&1
  run ahead0 . "-DCUFLASH_BIAS_AHEAD=0" --mode fwd --headdim 128 --nheads 16 --bias $shape --peers none \
    > $o/fwd128-ahead0-$s.txt 2>&1
  [ $shape = 1,h,s,s ] && run order0 . "-DCUFLASH_BIAS_BATCH_ORDER=0" --mode fwd --headdim 128 --nheads 16 \
    --bias $shape --peers none > $o/fwd128-order0-$s.txt 2>&1
  pack
  for d in 64 128; do
    h=$([ $d = 64 ] && echo 32 || echo 16)
    run main ab/main "" --mode bwd --headdim $d --nheads $h --bias $shape --peers none > $o/bwd$d-main-$s.txt 2>&1
    run ahead2 . "" --mode bwd --headdim $d --nheads $h --bias $shape --peers none > $o/bwd$d-staged-$s.txt 2>&1
    pack
  done
done
run ahead2 . "" --mode fwd,bwd --headdim 128 --nheads 16 --peers none > $o/plain128-staged.txt 2>&1
pack
grep -H -E "bias\(|raised|Error" $o/*.txt | sed "s|$o/||"; grep -h -E "^ *(fwd|bwd)" $o/plain128-staged.txt
