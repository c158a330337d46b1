# Twenty-second session, call 1. From the repo root: DEADLINE=<the call's limit less 30 s> bash <this>.
# (1) trees: b = this one; a = b with varlen_sums.patch reversed (varlen d128 without the rows' sums from
# P V, list of 512); e2 = b with kernels_cu/dev/fwd_exp2_fma.patch at 2 of every 8 exponentials on the FMA pipe;
# (2) first what checks e662cb0 (the varlen d128 sums), in parallel: varlen / packed tests (Hopper), torch
# varlen, memcheck and racecheck of san_varlen.py; (3) benchmarks alone on the GPU, alternated: varlen equal
# d128 1k / 4k a, b; softcap 30 d64 / d128 8k e0 (= b), e2; (4) e2's softcap tests; (5) round 2: e2, e0; b, a.
# (The patch's default is k = 2 since this session; the sed below only checks it.) Logs under /tmp/r ->
# $OUT/r.tgz, packed every 15 s.
export PYTHONUNBUFFERED=1
DEADLINE=${DEADLINE:-540}
left() { echo $((DEADLINE - SECONDS)); }
HERE=bench/results/2026-12-06-twentysecond
R=/tmp/r; rm -rf $R; mkdir -p $R/ab $R/t
pack() { tar -czf $OUT/r.tmp.tgz -C $R . && mv $OUT/r.tmp.tgz $OUT/r.tgz ; }
( while sleep 15; do pack; done ) &
packer=$!
nvidia-smi --query-gpu=name --format=csv,noheader > $R/gpu.txt
for n in a b e2; do rm -rf /tmp/$n && mkdir /tmp/$n && cp -r cuflash kernels_cu bench tests pyproject.toml /tmp/$n/; done
(cd /tmp/a && patch -R -p1 -s < $HERE/varlen_sums.patch) && grep -c "room // 16" /tmp/a/cuflash/specs.py > $R/t/a-room.txt
(cd /tmp/e2 && patch -p1 -s < kernels_cu/dev/fwd_exp2_fma.patch && sed -i "s/^FWD_SM90_EXP2_FMA_OF_8 = 4$/FWD_SM90_EXP2_FMA_OF_8 = 2/" cuflash/specs.py)
grep -c "^FWD_SM90_EXP2_FMA_OF_8 = 2$" /tmp/e2/cuflash/specs.py > $R/t/e2-define.txt
comp() {  # comp TREE FEATURES...
  local t=$1; shift
  (cd /tmp/$t && CUFLASH_CACHE_DIR=/tmp/cc-$t PYTHONPATH=/tmp/$t timeout 150 python3 -m cuflash compile --arch sm_90a \
     "$@" --dtypes bf16 --only fwd90_bf16_d64 --only fwd90_bf16_d128 -j 5 > $R/t/compile-$t.log 2>&1)
}
comp a --features varlen --features causal,varlen &
comp b --features varlen --features causal,varlen --features softcap --features causal,softcap &
comp e2 --features softcap --features causal,softcap &
wait $(jobs -p | grep -v "^$packer$")
tail -n 1 $R/t/compile-*.log
bench() {  # bench TAG ROUND NAME CHECK ARGS...
  local t=$1 round=$2 name=$3 check=$4; shift 4
  (cd /tmp/$t && PYTHONPATH=/tmp/$t CUFLASH_CACHE_DIR=/tmp/cc-$t timeout 120 python3 -m cuflash bench --mode fwd \
     --no-progress --peers none $check "$@" > $R/ab/$t-$name-$round.log 2>&1)
  grep -H " fwd " $R/ab/$t-$name-$round.log | sed 's#.*/ab/##'
}
vl="--headdim 128 --seqlen 1k,4k --causal both --varlen equal"
sc="--headdim 64,128 --seqlen 8k --causal both --softcap 30"
export OMP_NUM_THREADS=4 OPENBLAS_NUM_THREADS=4
py="python3 -m pytest -q -rfE -p no:cacheprovider"
t=$(( $(left) > 330 ? 170 : $(left) / 2 ))
(cd /tmp/b && PYTHONPATH=/tmp/b CUFLASH_CACHE_DIR=/tmp/cc-b timeout $t $py tests/gpu/test_varlen.py tests/gpu/test_packed.py \
   -k "not portable" > $R/t/varlen-packed.log 2>&1) &
(cd /tmp/b && PYTHONPATH=/tmp/b CUFLASH_CACHE_DIR=/tmp/cc-b timeout $t $py tests/gpu/test_torch.py -k "varlen" \
   > $R/t/torch-varlen.log 2>&1) &
(cd /tmp/b && for tool in memcheck racecheck; do PYTHONPATH=/tmp/b CUFLASH_CACHE_DIR=/tmp/cc-b timeout $(( t / 2 )) \
   compute-sanitizer --tool $tool --error-exitcode 9 python3 $HERE/san_varlen.py > $R/t/san-$tool.log 2>&1; \
   echo "rc $?" >> $R/t/san-$tool.log; done) &
wait $(jobs -p | grep -v "^$packer$")
for f in $R/t/varlen-packed.log $R/t/torch-varlen.log; do echo "$f: $(grep -E '^FAILED|^ERROR' $f | head -n 5) $(tail -n 1 $f)"; done
for tool in memcheck racecheck; do echo "$tool: $(grep -E 'ERROR SUMMARY|^rc|^ok' $R/t/san-$tool.log | tr '\n' ' ')"; done
if [ $(left) -gt 100 ]; then
  bench a 1 varlen --no-check $vl
  bench b 1 varlen "" $vl
  bench b 1 softcap --no-check $sc
  bench e2 1 softcap "" $sc
fi
if [ $(left) -gt 100 ]; then
  (cd /tmp/e2 && PYTHONPATH=/tmp/e2 CUFLASH_CACHE_DIR=/tmp/cc-e2 timeout 90 $py tests/gpu/test_variants.py \
     tests/gpu/test_forward.py -k "softcap and not portable" > $R/t/e2-softcap.log 2>&1)
  echo "e2 softcap tests: $(grep -E '^FAILED|^ERROR' $R/t/e2-softcap.log | head -n 5) $(tail -n 1 $R/t/e2-softcap.log)"
fi
if [ $(left) -gt 100 ]; then
  bench e2 2 softcap --no-check $sc
  bench b 2 softcap --no-check $sc
  bench b 2 varlen --no-check $vl
  bench a 2 varlen --no-check $vl
fi
kill $packer; pack
