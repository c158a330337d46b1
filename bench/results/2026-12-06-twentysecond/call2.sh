# Twenty-second session, call 2 (call1.sh cut to what a short call holds): the varlen d128 change alone.
# From the repo root: DEADLINE=<the call's limit less 30 s> bash <this>. (1) compile this tree's d128 varlen
# forwards; (2) in parallel: tests/gpu/test_varlen.py on Hopper, memcheck of san_varlen.py; (3) while time
# is left, varlen equal d128 1k / 4k, tree a (varlen_sums.patch reversed) and this one. Logs -> $OUT/r.tgz.
export PYTHONUNBUFFERED=1
DEADLINE=${DEADLINE:-190}
left() { echo $((DEADLINE - SECONDS)); }
HERE=bench/results/2026-12-06-twentysecond
R=/tmp/r; rm -rf $R; mkdir -p $R/ab $R/t
pack() { tar -czf $OUT/r.tmp.tgz -C $R . && mv $OUT/r.tmp.tgz $OUT/r.tgz ; }
( while sleep 10; do pack; done ) &
packer=$!
nvidia-smi --query-gpu=name --format=csv,noheader > $R/gpu.txt
for n in a b; do rm -rf /tmp/$n && mkdir /tmp/$n && cp -r cuflash kernels_cu bench tests pyproject.toml /tmp/$n/; done
(cd /tmp/a && patch -R -p1 -s < $HERE/varlen_sums.patch)
for t in a b; do (cd /tmp/$t && CUFLASH_CACHE_DIR=/tmp/cc-$t PYTHONPATH=/tmp/$t timeout 100 python3 -m cuflash compile \
  --arch sm_90a --features varlen --features causal,varlen --features "" --features causal --dtypes bf16 \
  --only fwd90_bf16_d128 -j 8 > $R/t/compile-$t.log 2>&1) & done
wait $(jobs -p | grep -v "^$packer$")
export OMP_NUM_THREADS=4 OPENBLAS_NUM_THREADS=4 PYTHONPATH=/tmp/b CUFLASH_CACHE_DIR=/tmp/cc-b
t=$(( $(left) - 70 ))
(cd /tmp/b && timeout $t python3 -m pytest -q -rfE -p no:cacheprovider tests/gpu/test_varlen.py -k "not portable" \
   > $R/t/varlen.log 2>&1) &
(cd /tmp/b && timeout $t compute-sanitizer --tool memcheck --error-exitcode 9 python3 $HERE/san_varlen.py \
   > $R/t/san-memcheck.log 2>&1; echo "rc $?" >> $R/t/san-memcheck.log) &
wait $(jobs -p | grep -v "^$packer$")
echo "varlen: $(grep -E '^FAILED|^ERROR' $R/t/varlen.log | head -n 5) $(tail -n 1 $R/t/varlen.log)"
echo "memcheck: $(grep -E 'ERROR SUMMARY|^rc|^ok' $R/t/san-memcheck.log | tr '\n' ' ')"
for t in a b; do [ $(left) -gt 25 ] || break
  (cd /tmp/$t && PYTHONPATH=/tmp/$t CUFLASH_CACHE_DIR=/tmp/cc-$t timeout $(( $(left) - 5 )) python3 -m cuflash bench --mode fwd \
     --no-progress --peers none --no-check --headdim 128 --seqlen 1k,4k --causal both --varlen equal > $R/ab/$t-varlen.log 2>&1)
  grep -H " fwd " $R/ab/$t-varlen.log | sed 's#.*/ab/##'
done
kill $packer; pack
