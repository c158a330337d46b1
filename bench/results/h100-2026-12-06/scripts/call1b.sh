# Second call (2026-12-06): call1.sh's run of 2026-12-06 returned only 8 files (the device tool's count
# limit), the "new" and "both" rounds of (b); this one repeats what was lost, packed in one archive.
# (a) the d64 dropout A/B at 192 x 64 (D64DROP=1) against 128 x 128 (D64DROP=0), the plain forward beside;
# (b) the portable backward: HEAD ("new") against v4 alone and split alone, one round.
H=bench/results/h100-2026-12-06/scripts
export PYTHONPATH=. PYTHONUNBUFFERED=1
R=$OUT/r; mkdir -p $R/drop $R/ab
pack() { tar -czf $OUT/r.tgz -C $R . ; }
nvidia-smi --query-gpu=name --format=csv,noheader > $R/gpu.txt
for v in 1 0 1 0; do
  D64DROP=$v CUFLASH_CACHE_DIR=/tmp/cc-drop timeout 70 python3 $H/bench_d64drop.py bench --mode fwd --headdim 64 \
    --seqlen 2k,8k --causal both --dropout 0.1 --peers sdpa-flash --no-check --no-progress >> $R/drop/d$v.log 2>&1
  pack
done
CUFLASH_CACHE_DIR=/tmp/cc-drop timeout 40 python3 -m cuflash bench --mode fwd --headdim 64 --seqlen 2k,8k --causal both \
  --peers none --no-check --no-progress > $R/drop/plain.log 2>&1
pack
for f in $R/drop/*.log; do echo "== $f"; grep -E "^ *bf16" $f; done
CUFLASH_DISABLE_SM90=1 CUFLASH_CACHE_DIR=$PWD/.kcache timeout 240 bash bench/ab_kernels.sh $R/ab \
  ab/v4/kernels_cu,ab/split/kernels_cu 1 -- \
  --mode bwd --headdim 64,256 --seqlen 2k,8k --causal both --peers sdpa-flash --no-check 2>&1 | tail -n 10
pack
