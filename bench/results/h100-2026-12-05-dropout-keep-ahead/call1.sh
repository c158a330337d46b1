nvidia-smi --query-gpu=name --format=csv,noheader; export PYTHONPATH=.
B="--headdim 64,128 --seqlen 8k --causal both --batch 2 --hidden 2048 --peers none --no-check --no-progress"
bash bench/ab_kernels.sh $OUT/ab ab/old/kernels_cu 2 -- --mode fwd,bwd $B --dropout 0.1 2>&1 | tail -10
CUFLASH_CACHE_DIR=/tmp/k1 CUFLASH_NVRTC_OPTIONS=-DCUFLASH_KEEP_UNROLL=1 python3 -m cuflash bench --mode fwd $B --dropout 0.1 --json $OUT/k1.json > $OUT/k1.log 2>&1; grep -E "^ bf16" $OUT/k1.log
python3 -m cuflash bench --mode fwd,bwd $B --json $OUT/plain.json > $OUT/plain.log 2>&1; grep -E "^ bf16" $OUT/plain.log
timeout 220 python3 -m pytest tests/gpu/test_dropout.py -q -p no:cacheprovider -k "not fp32" 2>&1 | tail -4
