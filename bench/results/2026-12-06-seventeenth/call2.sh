# Seventeenth session, second device call. From the repo root: bash bench/results/2026-12-06-seventeenth/call2.sh
# cuflash.torch's dropout seed now drawn on the GPU and read there by the kernels (Features.dropout 2, the seed
# words in device memory, each word through redux.sync so the key stays a uniform value), so dropout works in a
# captured CUDA graph; cuflash.jax.attention_varlen takes dropout.
# (a) kernels_cu/dev/dropout_seed_source.py: the seed as launch values against the seed in memory (bit-equal
#     outputs first), d64 / d128, 2k / 8k, causal and not, forward and backward, two alternated rounds;
# (b) tests: test_torch.py whole (the CUDA-graph dropout test is new), test_torch.py -k dropout on the portable
#     kernels, test_jax.py -k "varlen or dropout" (varlen with dropout is new);
# (c) compute-sanitizer memcheck and racecheck of sanitize_case.py's plans section (a seed in device memory,
#     forward and backward).
# Logs under /tmp/r, packed into $OUT/r.tgz after each part.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
R=/tmp/r; mkdir -p $R
pack() { tar -czf $OUT/r.tgz -C $R . ; }
nvidia-smi --query-gpu=name --format=csv,noheader > $R/gpu.txt
CUFLASH_CACHE_DIR=/tmp/cc-seed timeout 240 python3 kernels_cu/dev/dropout_seed_source.py 64,128 2048,8192 > $R/seed-source.log 2>&1
pack
export OMP_NUM_THREADS=3 OPENBLAS_NUM_THREADS=3
CUFLASH_CACHE_DIR=/tmp/cc-t1 timeout 280 python3 -m pytest tests/gpu/test_torch.py -q -rfE -p no:cacheprovider > $R/torch.log 2>&1 &
CUFLASH_DISABLE_SM90=1 CUFLASH_CACHE_DIR=/tmp/cc-t2 timeout 280 python3 -m pytest tests/gpu/test_torch.py -k "dropout or graph" -q -rfE \
  -p no:cacheprovider > $R/torch-portable.log 2>&1 &
CUFLASH_CACHE_DIR=/tmp/cc-t3 timeout 280 python3 -m pytest tests/gpu/test_jax.py -k "varlen or dropout" -q -rfE -p no:cacheprovider \
  > $R/jax.log 2>&1 &
( CUFLASH_CACHE_DIR=/tmp/cc-t4 SANITIZE_SECTIONS=plans timeout 140 compute-sanitizer --tool memcheck --error-exitcode 9 \
    python3 bench/sanitize_case.py > $R/memcheck.log 2>&1
  CUFLASH_CACHE_DIR=/tmp/cc-t4 SANITIZE_SECTIONS=plans timeout 140 compute-sanitizer --tool racecheck --error-exitcode 9 \
    python3 bench/sanitize_case.py > $R/racecheck.log 2>&1 ) &
wait
pack
cat $R/seed-source.log
for f in $R/*.log; do echo "$f: $(grep -E '^FAILED|^ERROR' $f | head -n 5) $(tail -n 2 $f | tr '\n' ' ')"; done
