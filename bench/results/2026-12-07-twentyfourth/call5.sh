# Twenty-fourth session, second call: the landing checks for what call4 (last session's call4.sh) found.
# As run (twenty-fourth session): DEADLINE=310, no TS or R8: the tree itself had FWD_SM90_LISTED_ROWS = 8192 (v35).
# TS=1 applies kernels_cu/dev/fwd_varlen_tma_store.patch, R8=1 sets FWD_SM90_LISTED_ROWS = 8192, in this copy.
# (1) Hopper varlen/packed tests + torch/jax varlen; (2) memcheck and racecheck of san_varlen.py;
# (3) issue 11's speed: varlen mix vs flex and cuflash-padded, d128 16k; equal 8k vs dense, fwd and bwd.
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD CUFLASH_CACHE_DIR=/tmp/cc-land
DEADLINE=${DEADLINE:-540}
left() { echo $((DEADLINE - SECONDS)); }
R=/tmp/r5; rm -rf $R; mkdir -p $R
pack() { tar -czf $OUT/r.tmp.tgz -C $R . && mv $OUT/r.tmp.tgz $OUT/r.tgz ; }
( while sleep 15; do pack; done ) &
packer=$!
[ "${TS:-0}" = 1 ] && patch -p1 -s < kernels_cu/dev/fwd_varlen_tma_store.patch && echo "ts applied" | tee -a $R/trees.txt
[ "${R8:-0}" = 1 ] && sed -i "s/^FWD_SM90_LISTED_ROWS = 4096$/FWD_SM90_LISTED_ROWS = 8192/" cuflash/specs.py && \
  echo "r8: $(grep -c '^FWD_SM90_LISTED_ROWS = 8192$' cuflash/specs.py)" | tee -a $R/trees.txt
export OMP_NUM_THREADS=4 OPENBLAS_NUM_THREADS=4
timeout 240 python3 -m pytest -q -rfE -p no:cacheprovider tests/gpu/test_varlen.py tests/gpu/test_packed.py \
  -k "not portable" > $R/varlen-packed.log 2>&1 &
(timeout 200 python3 -m pytest -q -rfE -p no:cacheprovider tests/gpu/test_torch.py tests/gpu/test_jax.py -k "varlen or packed" \
  > $R/torch-jax.log 2>&1
 for tool in memcheck racecheck; do timeout 100 compute-sanitizer --tool $tool --error-exitcode 9 \
   python3 bench/results/2026-12-06-twentysecond/san_varlen.py > $R/san-$tool.log 2>&1; echo "rc $?" >> $R/san-$tool.log; done) &
wait $(jobs -p | grep -v "^$packer$")
echo "varlen/packed: $(grep -E '^FAILED|^ERROR' $R/varlen-packed.log | head -n 5) $(tail -n 1 $R/varlen-packed.log)"
echo "torch/jax: $(grep -E '^FAILED|^ERROR' $R/torch-jax.log | head -n 5) $(tail -n 1 $R/torch-jax.log)"
for tool in memcheck racecheck; do echo "$tool: $(grep -E 'SUMMARY|^rc' $R/san-$tool.log | tr '\n' ' ')"; done
[ $(left) -gt 60 ] && timeout $(( $(left) - 50 )) python3 -m cuflash bench --mode fwd,bwd --no-progress --peers flex,cuflash-padded \
  --headdim 128 --seqlen 8k --causal both --varlen mix 2>&1 | tee $R/bench-mix.txt | grep -E " (fwd|bwd) "
[ $(left) -gt 40 ] && timeout $(( $(left) - 5 )) python3 -m cuflash bench --mode fwd,bwd --no-progress --no-check --peers none \
  --headdim 128 --seqlen 8k --causal both --varlen equal 2>&1 | tee $R/bench-equal.txt | grep -E " (fwd|bwd) "
[ $(left) -gt 30 ] && timeout $(( $(left) - 5 )) python3 -m cuflash bench --mode fwd,bwd --no-progress --no-check --peers none \
  --headdim 128 --seqlen 8k --causal both 2>&1 | tee $R/bench-dense.txt | grep -E " (fwd|bwd) "
kill $packer; pack
