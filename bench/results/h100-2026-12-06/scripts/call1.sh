# Next session's first device call (written 2026-12-05, fourteenth session, when no machine started).
# bash bench/results/h100-2026-12-06/scripts/prepare.sh first (CPU side). Most important first; each part has
# its own timeout so that a cut call still returns what ran.
# (a) Issue 10: the Hopper d64 dropout forward at 192 x 64 tiles (three consumer warpgroups;
#     kernels_cu/dev/fwd90_dropout_d64_three_warpgroups.patch, here by patch_d64drop.py, D64DROP=1)
#     against today's 128 x 128 (D64DROP=0), alternated, the plain forward beside.
# (b) Issue 15: the portable backward's dQ reductions, four trees in alternated rounds: "new" (HEAD),
#     v4 (red.global.add.v4.f32), split (dQ's halves after dV's and dK's products), both.
# (c) Tests in parallel: the Hopper dropout tests with 192 x 64; the portable tests of the "both" tree.
set -x
H=bench/results/h100-2026-12-06/scripts
export PYTHONPATH=. PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv > $OUT/gpu.txt
mkdir -p $OUT/drop $OUT/t
for v in 1 0 1 0; do
  D64DROP=$v CUFLASH_CACHE_DIR=/tmp/cc-drop timeout 60 python3 $H/bench_d64drop.py bench --mode fwd --headdim 64 \
    --seqlen 2k,8k --causal both --dropout 0.1 --peers sdpa-flash --no-check --no-progress >> $OUT/drop/d$v.log 2>&1
done
CUFLASH_CACHE_DIR=/tmp/cc-drop timeout 40 python3 -m cuflash bench --mode fwd --headdim 64 --seqlen 2k,8k --causal both \
  --peers none --no-check --no-progress > $OUT/drop/plain.log 2>&1
for f in $OUT/drop/*.log; do echo "== $f"; grep -E "^ *bf16" $f; done
CUFLASH_DISABLE_SM90=1 CUFLASH_CACHE_DIR=$PWD/.kcache timeout 300 bash bench/ab_kernels.sh $OUT/ab \
  ab/v4/kernels_cu,ab/split/kernels_cu,ab/both/kernels_cu 2 -- \
  --mode bwd --headdim 64,256 --seqlen 2k,8k --causal both --peers sdpa-flash --no-check 2>&1 | tail -n 10
export OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2
PYTHONPATH=.:$H CUFLASH_CACHE_DIR=/tmp/cc-drop timeout 150 python3 -m pytest -p patch_d64drop tests/gpu/test_dropout.py \
  -k "sm90" -q -rfE -p no:cacheprovider > $OUT/t/drop192.log 2>&1 &
i=0
for g in "tests/gpu/test_backward.py" "tests/gpu/test_float32.py tests/gpu/test_varlen.py tests/gpu/test_packed.py" \
         "tests/gpu/test_dropout.py tests/gpu/test_bias.py" "tests/gpu/test_variants.py"; do
  CUFLASH_CACHE_DIR=$PWD/.kcache-both CUFLASH_KERNELS_DIR=$PWD/ab/both/kernels_cu \
    timeout 150 python3 -m pytest $g -k portable -q -rfE -p no:cacheprovider > $OUT/t/g$i.log 2>&1 &
  i=$((i+1))
done
wait
for f in $OUT/t/*.log; do echo "$f: $(grep -E '^FAILED|^ERROR' $f | head -n 5) $(tail -c 300 $f | tr '\n' ' ')"; done
