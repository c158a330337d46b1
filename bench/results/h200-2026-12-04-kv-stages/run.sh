export PYTHONPATH=. CUFLASH_CACHE_DIR=/tmp/cc; A=kernels_cu/dev/fwd_grid_ab.py; mkdir -p $OUT
for i in 1 2; do
SEQLENS=512,1024,2048 python3 $A s2 64
SEQLENS=512,1024,2048 TILES=64:192x128s3 SHORT_TILES=64:128x128s3 python3 $A s3 64
SEQLENS=512,1024,2048 TILES=64:192x128s4 SHORT_TILES=64:128x128s4 python3 $A s4 64
done 2>&1 | tee $OUT/ab-stages.txt | sort -s -k2,2 -k4,4 -k3,3 | awk '{print $1,$2,$3,$4,$7}'
