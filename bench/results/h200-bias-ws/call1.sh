#!/usr/bin/env bash
# Call 1 for the branch bias-ws (bench/NOTES.md v26): the staged bias of the warp-specialised Hopper
# forward. Its GPU tests (both families), memcheck and racecheck of sanitize_case.py's bias section on the
# Hopper kernels, then README's bias table (bf16, d128, 8k, batch 2, 16 heads, forward), this tree against
# main's (ab/main, made before the call: mkdir -p ab/main && git archive main | tar -x -C ab/main; it is
# untracked, so it travels with the working tree).
set -u
export PYTHONUNBUFFERED=1
o=$OUT
pack() { tar -czf $OUT/logs.tgz -C $o --exclude logs.tgz . 2>/dev/null; }
PYTHONPATH=. CUFLASH_CACHE_DIR=/tmp/cc timeout 200 python3 -m pytest tests/gpu/test_bias.py -q -rfE -p no:cacheprovider \
  > $o/test-bias.txt 2>&1
pack
PYTHONPATH=. CUFLASH_CACHE_DIR=/tmp/cc timeout 90 python3 -m pytest tests/gpu/test_variants.py tests/gpu/test_dropout.py \
  tests/gpu/test_torch.py tests/gpu/test_jax.py -k "bias and not portable" -q -rfE -p no:cacheprovider > $o/test-bias-others.txt 2>&1
pack
for tool in memcheck racecheck; do
  PYTHONPATH=. CUFLASH_CACHE_DIR=/tmp/cc SANITIZE_SECTIONS=bias CUFLASH_DISABLE_SM90=0 timeout 150 \
    compute-sanitizer --tool $tool --error-exitcode 9 python3 bench/sanitize_case.py > $o/sanitizer-$tool.txt 2>&1
  echo "$tool rc=$?" >> $o/sanitizer-summary.txt
  pack
done
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
tail -n 3 $o/test-bias.txt $o/test-bias-others.txt; cat $o/sanitizer-summary.txt; tail -n 8 $o/bench-*.txt
