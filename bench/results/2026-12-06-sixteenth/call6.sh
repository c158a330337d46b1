# Sixth call (2026-12-06, sixteenth session): (a) test_dropout's long-queries cases (d64, d128: added in call 3
# against dr8's kernels) on the landed kernels; (b) ncu of the d128 dropout forward (bf16 8k, batch 2, 16 heads)
# on the landed kernels and on dr8's v3 (kernels_cu/dev/fwd90_dropout_keep_by_producer.patch, applied to a copy
# of the tree): where the producer's draws wait (NOTES dr8 left it not understood). TREES=v3:/tmp/v3 profiles v3 alone.
export PYTHONPATH=. PYTHONUNBUFFERED=1
R=/tmp/r; mkdir -p $R
pack() { tar -czf $OUT/r.tgz -C $R . ; }
CUFLASH_CACHE_DIR=/tmp/cc-t timeout 60 python3 -m pytest tests/gpu/test_dropout.py -k "long_queries and not portable" -q -rfE \
  -p no:cacheprovider > $R/long-queries.log 2>&1
tail -n 2 $R/long-queries.log
pack
rm -rf /tmp/v3 && mkdir /tmp/v3 && cp -r cuflash kernels_cu bench /tmp/v3/ && (cd /tmp/v3 && patch -p1 -s < kernels_cu/dev/fwd90_dropout_keep_by_producer.patch)
for tree in ${TREES:-landed:$PWD v3:/tmp/v3}; do
  tag=${tree%%:*}; dir=${tree#*:}
  (cd $dir && PYTHONPATH=$dir CUFLASH_CACHE_DIR=/tmp/cc-$tag python3 bench/profile_case.py --dropout 0.1 --batch 2 --nheads 16 > /dev/null 2>&1
   PYTHONPATH=$dir CUFLASH_CACHE_DIR=/tmp/cc-$tag timeout 100 ncu -k regex:cuflash_fwd -c 1 --set full --import-source no \
     -o $R/$tag python3 bench/profile_case.py --dropout 0.1 --batch 2 --nheads 16 > $R/$tag.log 2>&1)
  ncu -i $R/$tag.ncu-rep --page source --csv --print-source sass > $R/$tag.sass.csv 2>>$R/$tag.log
  ncu -i $R/$tag.ncu-rep --page details > $R/$tag.details.txt 2>>$R/$tag.log
  python3 bench/ncu_sass_summary.py $R/$tag.sass.csv --top 40 > $R/$tag.summary.txt 2>&1
  rm -f $R/$tag.ncu-rep
  pack
done
head -n 30 $R/v3.summary.txt
