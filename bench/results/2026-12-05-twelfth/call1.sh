# Call 1 (issue 15): the portable backward's products with the next k-step's fragments loaded
# ahead (mma.cuh warp_product, rolled loops only), A/B against HEAD's kernels_cu, and ncu's
# per-instruction stalls of the d256 and d64 backward beside FlashAttention-2's (SDPA flash).
set -x
export PYTHONPATH=. PYTHONUNBUFFERED=1 CUFLASH_DISABLE_SM90=1
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv > $OUT/gpu.txt
CUFLASH_CACHE_DIR=$PWD/.kcache bash bench/ab_kernels.sh $OUT/ab ab/old/kernels_cu 2 -- \
  --mode bwd --headdim 64,256 --seqlen 2k,8k --causal both --peers sdpa-flash --no-check 2>&1 | tail -n 30 > $OUT/ab.txt
for case in 256:2048 64:8192; do
  for k in 'cuflash_bwd$' 'flash_bwd_dq_dk_dv'; do
    tag=${case/:/-}-$( [ "$k" = 'cuflash_bwd$' ] && echo cuflash || echo fa2 )
    CUFLASH_CACHE_DIR=$PWD/.kcache-new timeout 150 ncu --profile-from-start off -k regex:"$k" --set full \
      --import-source no -o $OUT/$tag python3 kernels_cu/dev/ncu_bwd_portable.py $case > $OUT/$tag.log 2>&1
    ncu -i $OUT/$tag.ncu-rep --page source --csv --print-source sass > $OUT/$tag.sass.csv 2>>$OUT/$tag.log
    ncu -i $OUT/$tag.ncu-rep --page details > $OUT/$tag.details.txt 2>>$OUT/$tag.log
    python3 bench/ncu_sass_summary.py $OUT/$tag.sass.csv --top 40 > $OUT/$tag.summary.txt 2>&1
    rm -f $OUT/$tag.ncu-rep
  done
done
CUFLASH_CACHE_DIR=$PWD/.kcache-new timeout 130 python3 -m pytest tests/gpu/test_backward.py -k portable -q -p no:cacheprovider 2>&1 | tail -n 15 > $OUT/tests.txt
cd $OUT && tar czf logs.tgz *.log ab *.csv *.details.txt && rm -rf ab *.sass.csv *.details.txt *.log
