# Call 2 (written 2026-12-05, fourteenth session; not yet run) (issue 10): Nsight Compute, full set, on the v29 biased forward (bias tile by TMA), d128 8k bf16,
# batch 2, 16 heads: a full (b,h,s,s) bias, a head-shared (1,h,s,s) one and no bias; the details page and
# the SASS page's stall summary, to see what the biased kernel waits for beside the plain one.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 CUFLASH_CACHE_DIR=/tmp/cc
o=/tmp/o; mkdir -p $o  # outside $OUT: only the archive comes back (the device tool returns 8 files at most)
pack() { tar -czf $OUT/logs.tgz -C $o --exclude logs.tgz --exclude '*.ncu-rep' --exclude '*.sass.csv' . 2>/dev/null; }
for b in b,h,s,s 1,h,s,s none; do
  n=${b//,/}
  arg="--bias $b"; [ $b = none ] && arg=""
  timeout 100 ncu -k regex:cuflash_fwd -c 1 --set full --import-source no -o $o/fwd-$n \
    python3 bench/profile_case.py --batch 2 --nheads 16 $arg > $o/ncu-$n.log 2>&1
  ncu -i $o/fwd-$n.ncu-rep --page details --csv > $o/fwd-$n.details.csv 2>&1
  ncu -i $o/fwd-$n.ncu-rep --page source --csv --print-source sass > $o/fwd-$n.sass.csv 2>&1
  python3 bench/ncu_sass_summary.py $o/fwd-$n.sass.csv --top 30 > $o/fwd-$n.summary.txt 2>&1
  pack
done
for n in bhss 1hss none; do
  echo "== $n"
  grep -E '"(Duration|DRAM Throughput|Memory Throughput|L2 Hit Rate|L1/TEX Hit Rate|Compute \(SM\) Throughput|Registers Per Thread|Achieved Occupancy)"' $o/fwd-$n.details.csv | cut -d, -f5- | head -20
  head -n 30 $o/fwd-$n.summary.txt
done
