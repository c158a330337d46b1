#!/usr/bin/env bash
# Call 1 for the branch decode-contig (bench/NOTES.md d3): the KV-cache tests, then decode's TB/s, this tree
# against main's (ab/main, made before the call: mkdir -p ab/main && git archive main | tar -x -C ab/main;
# untracked, so it travels), two alternated rounds.
set -u
export PYTHONUNBUFFERED=1
o=$OUT
pack() { tar -czf $OUT/logs.tgz -C $o --exclude logs.tgz . 2>/dev/null; }
PYTHONPATH=. CUFLASH_CACHE_DIR=/tmp/cc timeout 200 python3 -m pytest tests/gpu/test_kvcache.py -q -rfE -p no:cacheprovider \
  > $o/test-kvcache.txt 2>&1
pack
for round in 1 2; do
  for tree in . ab/main; do
    name=$([ $tree = . ] && echo contig || echo main)
    PYTHONPATH=$tree CUFLASH_KERNELS_DIR=$tree/kernels_cu CUFLASH_CACHE_DIR=/tmp/cc-$name timeout 120 python3 -m cuflash bench \
      --mode decode --page-size 0,16 --peers sdpa-cudnn --no-progress > $o/decode-$name-$round.txt 2>&1
    pack
  done
done
tail -n 3 $o/test-kvcache.txt; tail -n 12 $o/decode-*.txt
