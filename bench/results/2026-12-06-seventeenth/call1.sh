# Seventeenth session (2026-12-06), first device call. From the repo root: bash bench/results/2026-12-06-seventeenth/call1.sh
# (a) NOTES dr8b: bench/results/next-sixteenth/call1.sh (A/B of the drawer-warps d128 dropout forward against HEAD,
#     two alternated rounds; then test_dropout Hopper, the mask test, memcheck and racecheck in the patched tree);
# (b) test_dropout's long-queries cases (d64, d128) on the landed kernels (never run at d128 there);
# (c) issue 15: the portable d64 forward's tiles, 128x64x4q (today's) beside 128x128x4q / 128x128x4
#     (FlashAttention-2's d64 tile), bf16, 512 to 8k, SDPA flash beside (bench/tune_fwd.py).
# Every log under /tmp/r, packed into $OUT/r.tgz after each part.
R=/tmp/r; mkdir -p $R
pack() { tar -czf $OUT/r.tgz -C $R . ; }
ROOT=$PWD
bash bench/results/next-sixteenth/call1.sh > $R/dr8b.log 2>&1
cd $ROOT && export PYTHONPATH=$ROOT PYTHONUNBUFFERED=1
CUFLASH_CACHE_DIR=/tmp/cc-lq timeout 90 python3 -m pytest tests/gpu/test_dropout.py -k "long_queries and not portable" -q -rfE \
  -p no:cacheprovider > $R/long-queries.log 2>&1
pack
CUFLASH_DISABLE_SM90=1 CUFLASH_CACHE_DIR=/tmp/cc-tune timeout 200 python3 bench/tune_fwd.py --headdim 64 --seqlen 512,1k,2k,8k \
  --tiles 128x128x4q,128x128x4 > $R/tune-fwd-d64.log 2>&1
pack
tail -n 3 $R/long-queries.log; tail -n 30 $R/tune-fwd-d64.log
