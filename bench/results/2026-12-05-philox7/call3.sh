# Device call 3: is the portable varlen dropout dq miss of call 2 the new forward (drop_packed) or the
# data (repeat with both kernel trees)? Then the final Hopper figures beside SDPA flash with dropout.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 CUFLASH_CACHE_DIR=$PWD/.kcache OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2
nvidia-smi --query-gpu=name --format=csv,noheader
T0=$(date +%s)
rep() {  # tree label, kernels dir
  for i in 1 2 3 4 5 6; do
    CUFLASH_KERNELS_DIR=$2 timeout 60 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_dropout.py \
      -k "varlen_dropout and portable" 2>&1 | grep -E "passed|failed|max error" | tr '\n' ' ' | sed "s/^/$1 $i: /"; echo
  done
}
rep new "" > $OUT/rep-new.txt & rep mid $PWD/ab/mid/kernels_cu > $OUT/rep-mid.txt & wait
cat $OUT/rep-new.txt $OUT/rep-mid.txt
echo "reps: $(( $(date +%s) - T0 )) s"
B="--mode fwd,bwd --headdim 64,128 --seqlen 8k --causal both --batch 2 --hidden 2048 --no-progress"
CUFLASH_CACHE_DIR=$PWD/.kcache/ab-new timeout 90 python3 -m cuflash bench $B --peers none > $OUT/plain.log 2>&1
CUFLASH_CACHE_DIR=$PWD/.kcache/ab-new timeout 120 python3 -m cuflash bench $B --peers sdpa-flash --no-check --dropout 0.1 > $OUT/peer.log 2>&1
grep -E "^ bf16" $OUT/plain.log $OUT/peer.log
echo "total: $(( $(date +%s) - T0 )) s"
