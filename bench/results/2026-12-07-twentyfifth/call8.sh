# Twenty-fifth session, call 8: the per-key bias kernel with the k-step, the lean producer and the rows' sums from
# P V (sums_by_mma, now that the 16-row staged slot leaves room for the ones at d128): tree k3 (this working
# tree) against b = HEAD (head.tgz, made for the call from `git archive HEAD`).
# (1) k3's checks: test_bias.py on Hopper, memcheck and racecheck of san_per_key.py, in parallel.
# (2) alone on the GPU: bf16 d128 8k batch 2 per-key forward, causal and not, b / k3 alternated, two rounds
#     (k3's first with the float64 check), the plain forward once per round; fp16 once.
export PYTHONUNBUFFERED=1
DEADLINE=${DEADLINE:-540}
ROOT=$PWD
D=bench/results/2026-12-07-twentyfifth
left() { echo $((DEADLINE - SECONDS)); }
R=/tmp/r; rm -rf $R; mkdir -p $R
pack() { tar -czf $OUT/r.tmp.tgz -C $R . && mv $OUT/r.tmp.tgz $OUT/r.tgz ; }
( while sleep 15; do pack; done ) &
packer=$!
nvidia-smi --query-gpu=name --format=csv,noheader > $R/gpu.txt
rm -rf /tmp/b /tmp/k3 && mkdir -p /tmp/b /tmp/k3
tar -xzf $D/head.tgz -C /tmp/b; cp -r cuflash kernels_cu tests pyproject.toml /tmp/k3/
for t in b k3; do (cd /tmp/$t && PYTHONPATH=/tmp/$t CUFLASH_CACHE_DIR=/tmp/cc-$t timeout 150 python3 -m cuflash compile \
  --arch sm_90a --features bias --features causal,bias --features softcap,bias --features causal,softcap,bias \
  --dtypes bf16,fp16 --only fwd90_bf16_d128 --only fwd90_fp16_d128 --only fwd90_bf16_d256 -j 7 > $R/compile-$t.log 2>&1) & done
wait $(jobs -p | grep -v "^$packer$")
tail -qn 1 $R/compile-*.log
export OMP_NUM_THREADS=4 OPENBLAS_NUM_THREADS=4
t=$(( $(left) > 300 ? 120 : $(left) / 3 ))
(cd /tmp/k3 && PYTHONPATH=/tmp/k3 CUFLASH_CACHE_DIR=/tmp/cc-k3 timeout $t python3 -m pytest -q -rfE -p no:cacheprovider \
   tests/gpu/test_bias.py -k "not portable" > $R/k3-bias.log 2>&1) &
(cd /tmp/k3 && for tool in memcheck racecheck; do PYTHONPATH=/tmp/k3 CUFLASH_CACHE_DIR=/tmp/cc-k3 timeout $(( t / 2 )) \
   compute-sanitizer --tool $tool --error-exitcode 9 python3 $ROOT/$D/san_per_key.py \
   > $R/k3-$tool.log 2>&1; echo "rc $?" >> $R/k3-$tool.log; done) &
wait $(jobs -p | grep -v "^$packer$")
echo "k3 bias tests: $(grep -E '^FAILED|^ERROR' $R/k3-bias.log | head -n 8) $(tail -n 1 $R/k3-bias.log)"
for tool in memcheck racecheck; do echo "k3 $tool: $(grep -E 'SUMMARY|^rc|^ok' $R/k3-$tool.log | tr '\n' ' ')"; done
b() {  # b TREE TAG CHECK ARGS...
  local t=$1 tag=$2 check=$3; shift 3
  (cd /tmp/$t && PYTHONPATH=/tmp/$t CUFLASH_CACHE_DIR=/tmp/cc-$t timeout 60 python3 -m cuflash bench --mode fwd \
     --no-progress --peers none $check "$@" 2>&1 | grep -E " fwd " | sed "s/^/$t-$tag /" | tee -a $R/bench.txt)
}
v="--headdim 128 --seqlen 8k --causal both"
for r in 1 2; do [ $(left) -gt 40 ] || break
  c=$([ $r = 1 ] && echo "" || echo --no-check)
  b b $r --no-check $v --bias b,1,1,s; b k3 $r "$c" $v --bias b,1,1,s; b b plain$r --no-check $v
done
[ $(left) -gt 25 ] && { b b fp16 --no-check --dtype fp16 $v --bias b,1,1,s; b k3 fp16 "" --dtype fp16 $v --bias b,1,1,s; }
kill $packer; pack
