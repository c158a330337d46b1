#!/usr/bin/env bash
# Run on the CPU side from the repo root before call1.sh: the old kernel trees of its A/B, under ab/
# (untracked, so they travel to the device with the working tree; remove ab/ before committing).
#   ab/v4     HEAD + kernels_cu/dev/bwd_dq_red_v4.patch
#   ab/split  HEAD + kernels_cu/dev/bwd_dq_split_after_products.patch
#   ab/both   HEAD + both
set -euo pipefail
rm -rf ab && mkdir -p ab/v4 ab/split ab/both
for t in v4 split both; do git archive HEAD kernels_cu | tar -x -C ab/$t; done
patch -s -p1 -d ab/v4 < kernels_cu/dev/bwd_dq_red_v4.patch
patch -s -p1 -d ab/split < kernels_cu/dev/bwd_dq_split_after_products.patch
patch -s -p1 -d ab/both < kernels_cu/dev/bwd_dq_red_v4.patch
patch -s -p1 -d ab/both < kernels_cu/dev/bwd_dq_split_after_products.patch
echo "ab/ ready: $(ls ab)"
