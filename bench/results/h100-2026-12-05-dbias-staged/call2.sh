#!/usr/bin/env bash
# Calls 2 and 3 as run (from the branch's tree at ab/ds of main's checkout, main's own tree at ab/ds/ab/main):
# the biased forward and backward against main, each tree from its own folder (`python3 -m` imports the host
# code of the folder it runs in), the prefetch off (CUFLASH_BIAS_AHEAD=0) and the old tile order
# (CUFLASH_BIAS_BATCH_ORDER=0) beside them. bf16, 8k, batch 2.
set -u
export PYTHONUNBUFFERED=1
o=$OUT
root=$PWD
run() {  # run NAME TREE EXTRA_NVRTC_OPTIONS bench-args...
  local name=$1 tree=$2 opts=$3; shift 3
  (cd $root/$tree && PYTHONPATH=. CUFLASH_NVRTC_OPTIONS="$opts" CUFLASH_CACHE_DIR=/tmp/cc2-$name timeout 90 \
    python3 -m cuflash bench --seqlen 8k --batch 2 --causal both --no-progress "$@")
}
for shape in b,h,s,s 1,h,s,s; do
  s=${shape//,/}
  run main ab/main "" --mode fwd --headdim 128 --nheads 16 --bias $shape --peers sdpa-cudnn > $o/fwd128-main-$s.txt 2>&1
  run ahead2 . "" --mode fwd --headdim 128 --nheads 16 --bias $shape --peers sdpa-cudnn > $o/fwd128-ahead2-$s.txt 2>&1
  run ahead0 . "-DCUFLASH_BIAS_AHEAD=0" --mode fwd --headdim 128 --nheads 16 --bias $shape --peers none \
    > $o/fwd128-ahead0-$s.txt 2>&1
  [ $s = 1hss ] && run order0 . "-DCUFLASH_BIAS_BATCH_ORDER=0" --mode fwd --headdim 128 --nheads 16 --bias $shape \
    --peers none > $o/fwd128-order0-$s.txt 2>&1
  for d in 64 128; do
    h=$([ $d = 64 ] && echo 32 || echo 16)
    run main ab/main "" --mode bwd --headdim $d --nheads $h --bias $shape --peers none > $o/bwd$d-main-$s.txt 2>&1
    run ahead2 . "" --mode bwd --headdim $d --nheads $h --bias $shape --peers none > $o/bwd$d-staged-$s.txt 2>&1
  done
done
run main ab/main "" --mode fwd --headdim 128 --nheads 16 --bias b,1,1,s --peers none > $o/fwd128-main-b11s.txt 2>&1
run ahead2 . "" --mode fwd --headdim 128 --nheads 16 --bias b,1,1,s --peers none > $o/fwd128-ahead2-b11s.txt 2>&1
grep -H -E "bias\(|raised|Error" $o/*.txt | sed "s|$o/||"
# Call 3: the branch's backward with the prefetch off.
for d in 64 128; do
  h=$([ $d = 64 ] && echo 32 || echo 16)
  run ahead0 . "-DCUFLASH_BIAS_AHEAD=0" --mode bwd --headdim $d --nheads $h --bias b,h,s,s --peers none | grep "bias("
done
