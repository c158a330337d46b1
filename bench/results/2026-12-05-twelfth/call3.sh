# Call 3 (issue 15): three trees of the portable backward in alternated rounds: "new" (dQ added by
# scalar red.global.add.f32, atomic.cuh; next k-step fragments loaded ahead in rolled loops, mma.cuh),
# "pf" (the loads ahead alone), "old" (HEAD); then the portable GPU tests of everything bwd.cu runs.
set -x
export PYTHONPATH=. PYTHONUNBUFFERED=1 CUFLASH_DISABLE_SM90=1
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv > $OUT/gpu.txt
CUFLASH_CACHE_DIR=$PWD/.kcache bash bench/ab_kernels.sh $OUT/ab ab/pf/kernels_cu,ab/old/kernels_cu 2 -- \
  --mode bwd --headdim 64,128,256 --seqlen 2k,8k --causal both --peers sdpa-flash --no-check 2>&1 | tail -n 16 > $OUT/ab.txt
export CUFLASH_CACHE_DIR=$PWD/.kcache-new OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2
unset CUFLASH_DISABLE_SM90
mkdir -p $OUT/t
i=0
for g in "tests/gpu/test_backward.py tests/gpu/test_float32.py" "tests/gpu/test_varlen.py tests/gpu/test_packed.py" \
         "tests/gpu/test_dropout.py" "tests/gpu/test_bias.py" "tests/gpu/test_variants.py -k portable and all_four" \
         "tests/gpu/test_variants.py -k portable and not all_four"; do
  files=${g%% -k *}; sel=portable; [[ "$g" == *" -k "* ]] && sel=${g#* -k }
  timeout 200 python3 -m pytest $files -k "$sel" -q -rfE -p no:cacheprovider > $OUT/t/g$i.log 2>&1 &
  i=$((i+1))
done
wait
for f in $OUT/t/g*.log; do echo "$f: $(tail -n 1 $f)"; done > $OUT/tests.txt
grep -h "^FAILED\|^ERROR" $OUT/t/g*.log | head -30 >> $OUT/tests.txt
cd $OUT && tar czf logs.tgz ab t && rm -rf ab t
