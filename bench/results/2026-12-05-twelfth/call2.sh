# Call 2 (issue 15): three trees of the portable backward in alternated rounds: "new" (dQ's product
# and reductions before dV's and dK's products, bwd.cu; next k-step's fragments loaded ahead in
# rolled loops, mma.cuh), "mid" (the dQ order alone), "old" (HEAD); then the portable GPU tests
# of everything bwd.cu runs, and ncu's stalls of the new d256 backward.
set -x
export PYTHONPATH=. PYTHONUNBUFFERED=1 CUFLASH_DISABLE_SM90=1
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv > $OUT/gpu.txt
CUFLASH_CACHE_DIR=$PWD/.kcache bash bench/ab_kernels.sh $OUT/ab ab/mid/kernels_cu,ab/old/kernels_cu 2 -- \
  --mode bwd --headdim 64,256 --seqlen 2k,8k --causal both --peers sdpa-flash --no-check 2>&1 | tail -n 12 > $OUT/ab.txt
export CUFLASH_CACHE_DIR=$PWD/.kcache-new OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2
unset CUFLASH_DISABLE_SM90
mkdir -p $OUT/t
i=0
for g in "tests/gpu/test_backward.py tests/gpu/test_float32.py" "tests/gpu/test_varlen.py tests/gpu/test_packed.py" \
         "tests/gpu/test_dropout.py" "tests/gpu/test_bias.py" "tests/gpu/test_variants.py -k portable and all_four" \
         "tests/gpu/test_variants.py -k portable and not all_four"; do
  files=${g%% -k *}; sel=portable; [[ "$g" == *" -k "* ]] && sel=${g#* -k }
  timeout 240 python3 -m pytest $files -k "$sel" -q -rfE -p no:cacheprovider > $OUT/t/g$i.log 2>&1 &
  i=$((i+1))
done
wait
for f in $OUT/t/g*.log; do echo "$f: $(tail -n 1 $f)"; done > $OUT/tests.txt
grep -h "^FAILED\|^ERROR" $OUT/t/g*.log | head -30 >> $OUT/tests.txt
CUFLASH_DISABLE_SM90=1 timeout 100 ncu --profile-from-start off -k regex:'cuflash_bwd$' --set full --import-source no \
  -o $OUT/d256 python3 kernels_cu/dev/ncu_bwd_portable.py 256:2048 > $OUT/ncu.log 2>&1
ncu -i $OUT/d256.ncu-rep --page source --csv --print-source sass > $OUT/d256.sass.csv 2>>$OUT/ncu.log
python3 bench/ncu_sass_summary.py $OUT/d256.sass.csv --top 30 > $OUT/d256.summary.txt 2>&1
ncu -i $OUT/d256.ncu-rep --page details > $OUT/d256.details.txt 2>>$OUT/ncu.log
cd $OUT && tar czf logs.tgz ab t *.log *.details.txt d256.sass.csv && rm -rf ab t *.log *.details.txt *.csv *.ncu-rep
