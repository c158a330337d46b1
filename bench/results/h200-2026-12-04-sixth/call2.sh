#!/usr/bin/env bash
# Call 2: the GPU tests in parallel (the portable backward's dQ now in whole blocks, no bounds),
# then the backward tuner beside SDPA flash (portable kernel, current tiles; d256 with k_unroll 4).
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 CUFLASH_CACHE_DIR=/tmp/cc
o=$OUT
pack() { tar -czf $OUT/logs.tgz -C $o --exclude logs.tgz . 2>/dev/null; }
bench/gpu_tests_parallel.sh $o/tests 330 > $o/tests-summary.txt 2>&1
pack
timeout 100 python3 bench/tune_bwd.py --headdim 64,128,256 --seqlen 2k,8k --current > $o/tune-current.txt 2>&1
pack
timeout 60 python3 bench/tune_bwd.py --headdim 256 --seqlen 2k,8k --tiles 64x64x8x2x2x2u4 > $o/tune-d256-u4.txt 2>&1
pack
cat $o/tests-summary.txt $o/tune-current.txt $o/tune-d256-u4.txt
