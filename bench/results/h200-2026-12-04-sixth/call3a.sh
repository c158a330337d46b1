#!/usr/bin/env bash
# Call 3a: the portable backward with Q/dO copied without bounds tests inside the tensor
# (beside call 2: dQ in whole blocks only), tuner beside SDPA flash, current tiles.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 CUFLASH_CACHE_DIR=/tmp/cc
timeout 150 python3 bench/tune_bwd.py --headdim 128,192,256 --seqlen 2k,8k --current > $OUT/tune-bwd-fastcopy.txt 2>&1
grep -v det $OUT/tune-bwd-fastcopy.txt
