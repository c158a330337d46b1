# Call 1: v29 (the bias tile by TMA, kernels_cu/dev/bias_tma.patch applied to the working tree) against main
# ("old") and the same without the L2 prefetch ("ahead0"); then the bias tests on the Hopper kernels, the
# sanitizer's bias section, and the varlen seqused_k tests (GQA backward, both families).
set -x
export PYTHONPATH=. PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv > $OUT/gpu.txt
for shape in b,h,s,s 1,h,s,s; do
  CUFLASH_CACHE_DIR=/tmp/kc-ab timeout 140 bash bench/ab_kernels.sh $OUT/ab-${shape//,/} ab/ahead0/kernels_cu,ab/old/kernels_cu 2 -- \
    --mode fwd --headdim 128 --seqlen 8k --causal both --bias $shape --peers sdpa-cudnn --no-check 2>&1 | tail -n 6 \
    > $OUT/ab-${shape//,/}.txt
done
mkdir -p $OUT/t
export CUFLASH_CACHE_DIR=/tmp/kc-new
i=0
for g in "tests/gpu/test_bias.py -k sm90" "tests/gpu/test_variants.py tests/gpu/test_dropout.py -k sm90_and_bias" \
         "tests/gpu/test_varlen.py -k seqused" "tests/gpu/test_torch.py tests/gpu/test_jax.py -k bias"; do
  files=${g%% -k *}; sel=${g#* -k }; sel=${sel//_and_/ and }
  timeout 220 python3 -m pytest $files -k "$sel" -q -rfE -p no:cacheprovider > $OUT/t/g$i.log 2>&1 &
  i=$((i+1))
done
for tool in memcheck racecheck; do
  SANITIZE_SECTIONS=bias timeout 220 compute-sanitizer --tool $tool --error-exitcode 9 python3 bench/sanitize_case.py \
    > $OUT/t/$tool.log 2>&1 &
done
wait
for f in $OUT/t/*.log; do echo "$f: $(tail -n 1 $f)"; done > $OUT/tests.txt
grep -h "^FAILED\|^ERROR\|ERROR SUMMARY\|RACECHECK SUMMARY" $OUT/t/*.log | head -40 >> $OUT/tests.txt
cd $OUT && tar czf logs.tgz t ab-*/ && rm -rf t ab-*/
