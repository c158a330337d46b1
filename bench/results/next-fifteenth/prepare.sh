#!/usr/bin/env bash
# CPU side, from the repo root, before call1.sh: the kernels before NOTES dr6 (the keep test's final and)
# under ab/pre-dr6 (untracked, so it travels to the device; remove ab/ before committing).
set -euo pipefail
rm -rf ab && mkdir -p ab/pre-dr6
git archive e55e6cd kernels_cu | tar -x -C ab/pre-dr6
echo "ab/ ready: $(ls ab)"
