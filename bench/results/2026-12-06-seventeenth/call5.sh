# Seventeenth session, fifth device call (the landed tree). From the repo root:
#   bash bench/results/2026-12-06-seventeenth/call5.sh
# test_torch.py whole (a torch.compile(mode="reduce-overhead") dropout test is new), test_jax.py whole, and
# test_bias.py's per-key cases again (one d256 dbias draw failed in call4 at the bf16 rule's edge).
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false OMP_NUM_THREADS=4 OPENBLAS_NUM_THREADS=4
R=/tmp/r; mkdir -p $R
pack() { tar -czf $OUT/r.tgz -C $R . ; }
nvidia-smi --query-gpu=name --format=csv,noheader > $R/gpu.txt
CUFLASH_CACHE_DIR=/tmp/cc-t1 timeout 280 python3 -m pytest tests/gpu/test_torch.py -q -rfE -p no:cacheprovider > $R/torch.log 2>&1 &
CUFLASH_CACHE_DIR=/tmp/cc-t2 timeout 280 python3 -m pytest tests/gpu/test_jax.py -q -rfE -p no:cacheprovider > $R/jax.log 2>&1 &
CUFLASH_CACHE_DIR=/tmp/cc-t3 timeout 280 python3 -m pytest tests/gpu/test_bias.py -k "per_key" -q -rfE -p no:cacheprovider \
  > $R/bias-per-key.log 2>&1 &
wait
pack
for f in $R/*.log; do echo "$f: $(grep -E '^FAILED|^ERROR' $f | head -n 5) $(tail -n 1 $f)"; done
