# Twenty-fifth session, call 5: the per-key bias forward (bench/NOTES.md v36): the ninth k-step of S and a lean
# producer (warp 0 alone copies the per-key row beside thread 0's TMA), apart and together.
# Trees: b = HEAD (head.tgz), hl = HEAD + lean producer (headlean.tgz), k = k-step (kstep.tgz, call 4's tree),
# k2 = this working tree (k-step + lean producer).
# (1) k2's checks: test_bias.py on Hopper, memcheck and racecheck of san_per_key.py, in parallel.
# (2) alone on the GPU: bf16 d128 8k batch 2 per-key forward, causal and not, the four trees alternated, two rounds
#     (k2's first with the float64 check), the plain forward once per round; d256 b / k2.
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
rm -rf /tmp/b /tmp/hl /tmp/k /tmp/k2 && mkdir -p /tmp/b /tmp/hl /tmp/k /tmp/k2
tar -xzf $D/head.tgz -C /tmp/b; tar -xzf $D/headlean.tgz -C /tmp/hl; tar -xzf $D/kstep.tgz -C /tmp/k
cp -r cuflash kernels_cu tests pyproject.toml /tmp/k2/
for t in b hl k k2; do (cd /tmp/$t && PYTHONPATH=/tmp/$t CUFLASH_CACHE_DIR=/tmp/cc-$t timeout 150 python3 -m cuflash compile \
  --arch sm_90a --features bias --features causal,bias --dtypes bf16 --only fwd90_bf16_d128 --only fwd90_bf16_d256 \
  -j 4 > $R/compile-$t.log 2>&1) & done
wait $(jobs -p | grep -v "^$packer$")
tail -qn 1 $R/compile-*.log
export OMP_NUM_THREADS=4 OPENBLAS_NUM_THREADS=4
t=$(( $(left) > 400 ? 170 : $(left) / 3 ))
(cd /tmp/k2 && PYTHONPATH=/tmp/k2 CUFLASH_CACHE_DIR=/tmp/cc-k2 timeout $t python3 -m pytest -q -rfE -p no:cacheprovider \
   tests/gpu/test_bias.py -k "not portable" > $R/k2-bias.log 2>&1) &
(cd /tmp/k2 && for tool in memcheck racecheck; do PYTHONPATH=/tmp/k2 CUFLASH_CACHE_DIR=/tmp/cc-k2 timeout $(( t / 2 )) \
   compute-sanitizer --tool $tool --error-exitcode 9 python3 $ROOT/$D/san_per_key.py \
   > $R/k2-$tool.log 2>&1; echo "rc $?" >> $R/k2-$tool.log; done) &
wait $(jobs -p | grep -v "^$packer$")
echo "k2 bias tests: $(grep -E '^FAILED|^ERROR' $R/k2-bias.log | head -n 8) $(tail -n 1 $R/k2-bias.log)"
for tool in memcheck racecheck; do echo "k2 $tool: $(grep -E 'SUMMARY|^rc|^ok' $R/k2-$tool.log | tr '\n' ' ')"; done
b() {  # b TREE TAG CHECK ARGS...
  local t=$1 tag=$2 check=$3; shift 3
  (cd /tmp/$t && PYTHONPATH=/tmp/$t CUFLASH_CACHE_DIR=/tmp/cc-$t timeout 60 python3 -m cuflash bench --mode fwd \
     --no-progress --peers none $check "$@" 2>&1 | grep -E " fwd " | sed "s/^/$t-$tag /" | tee -a $R/bench.txt)
}
v="--headdim 128 --seqlen 8k --causal both"
for r in 1 2; do [ $(left) -gt 60 ] || break
  c=$([ $r = 1 ] && echo "" || echo --no-check)
  for t in b hl k k2; do b $t $r --no-check $v --bias b,1,1,s; done; b b plain$r --no-check $v
done
[ $(left) -gt 30 ] && { b b d256 --no-check --headdim 256 --seqlen 8k --causal both --bias b,1,1,s;
                        b k2 d256 --no-check --headdim 256 --seqlen 8k --causal both --bias b,1,1,s; }
kill $packer; pack
