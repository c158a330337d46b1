export PYTHONPATH=. CUFLASH_CACHE_DIR=/tmp/cc; A=kernels_cu/dev/fwd_grid_ab.py; mkdir -p $OUT
C="python3 -m cuflash compile --arch sm_90a --only fwd90 --dtypes bf16 --features "" --features causal -j 16"
$C > $OUT/c_new.log 2>&1 & CUFLASH_KERNELS_DIR=bench/_oldk/kernels_cu CUFLASH_CACHE_DIR=/tmp/cco $C > $OUT/c_old.log 2>&1; wait; tail -1 $OUT/c_new.log $OUT/c_old.log
timeout 100 python3 -m pytest tests/gpu/test_forward.py -k "sm90 and (more_tiles or every_head_dim or large_scores or fully_masked or reversed or repeat)" -q -p no:cacheprovider > $OUT/t.log 2>&1; tail -1 $OUT/t.log; grep -m5 FAIL $OUT/t.log
for d in 256 128 64; do SEQLENS=512,2048 python3 $A lazy $d; CUFLASH_KERNELS_DIR=bench/_oldk/kernels_cu CUFLASH_CACHE_DIR=/tmp/cco SEQLENS=512,2048 python3 $A old $d; done 2>&1 | tee $OUT/ab.txt | sort -s -k2,2 -k4,4 -k3,3 | awk '{print $1,$2,$3,$4,$7}'
