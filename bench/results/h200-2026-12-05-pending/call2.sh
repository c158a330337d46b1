#!/usr/bin/env bash
# Call 2 on the branch `pending`: the timings of both changes, against main's kernels (ab/main): the bias
# (bench/results/h200-bias-ws/call2.sh) and decode's TB/s (the bench loop of bench/results/h200-decode-contig/call1.sh).
set -u
o=$OUT
pack() { tar -czf $OUT/logs.tgz -C $o --exclude logs.tgz . 2>/dev/null; }
mkdir -p $o/bias; OUT=$o/bias timeout 330 bash bench/results/h200-bias-ws/call2.sh > /dev/null 2>&1; pack
export PYTHONUNBUFFERED=1
for round in 1 2; do
  for tree in . ab/main; do
    name=$([ $tree = . ] && echo contig || echo main)
    PYTHONPATH=$tree CUFLASH_KERNELS_DIR=$tree/kernels_cu CUFLASH_CACHE_DIR=/tmp/cc-$name timeout 60 python3 -m cuflash bench \
      --mode decode --page-size 0,16 --peers sdpa-cudnn --no-progress > $o/decode-$name-$round.txt 2>&1
    pack
  done
done
tail -n 6 $o/bias/bench-*.txt; tail -n 12 $o/decode-*.txt
