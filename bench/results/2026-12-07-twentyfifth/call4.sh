# Twenty-fifth session, call 4: the per-key bias as a ninth k-step of S (bench/NOTES.md v36).
# Trees: b = HEAD (git stash of the working tree's changes is not used: /tmp/b from `git archive HEAD`, carried
# as bench/results/2026-12-07-twentyfifth/head.tgz), k = this working tree.
# (1) k's checks in parallel with nothing else on the GPU: test_bias.py on Hopper (the new test_per_key_bias_kernel
#     among them), then memcheck and racecheck of san_per_key.py.
# (2) alone on the GPU: bf16 d128 8k batch 2 forward, per-key bias (b,1,1,s) causal and not, b and k alternated
#     two rounds (k's first with the float64 check), the plain forward once per round; d256 and fp16 d128 once
#     each; softcap + per-key (the 16-row staged slot without the k-step) once each.
# Logs under /tmp/r -> $OUT/r.tgz, packed every 15 s. DEADLINE = the call's limit less 30 s.
export PYTHONUNBUFFERED=1
DEADLINE=${DEADLINE:-540}
ROOT=$PWD
left() { echo $((DEADLINE - SECONDS)); }
R=/tmp/r; rm -rf $R; mkdir -p $R
pack() { tar -czf $OUT/r.tmp.tgz -C $R . && mv $OUT/r.tmp.tgz $OUT/r.tgz ; }
( while sleep 15; do pack; done ) &
packer=$!
nvidia-smi --query-gpu=name --format=csv,noheader > $R/gpu.txt
rm -rf /tmp/b /tmp/k && mkdir -p /tmp/b /tmp/k
tar -xzf bench/results/2026-12-07-twentyfifth/head.tgz -C /tmp/b && cp -r bench /tmp/b/
cp -r cuflash kernels_cu bench tests pyproject.toml /tmp/k/
for t in b k; do (cd /tmp/$t && PYTHONPATH=/tmp/$t CUFLASH_CACHE_DIR=/tmp/cc-$t timeout 150 python3 -m cuflash compile \
  --arch sm_90a --features bias --features causal,bias --features softcap,bias --features causal,softcap,bias \
  --dtypes bf16,fp16 --only fwd90_bf16_d128 --only fwd90_fp16_d128 --only fwd90_bf16_d256 -j 7 > $R/compile-$t.log 2>&1) & done
wait $(jobs -p | grep -v "^$packer$")
tail -qn 1 $R/compile-*.log
export OMP_NUM_THREADS=4 OPENBLAS_NUM_THREADS=4
t=$(( $(left) > 400 ? 170 : $(left) / 3 ))
(cd /tmp/k && PYTHONPATH=/tmp/k CUFLASH_CACHE_DIR=/tmp/cc-k timeout $t python3 -m pytest -q -rfE -p no:cacheprovider \
   tests/gpu/test_bias.py -k "not portable" > $R/k-bias.log 2>&1) &
(cd /tmp/k && for tool in memcheck racecheck; do PYTHONPATH=/tmp/k CUFLASH_CACHE_DIR=/tmp/cc-k timeout $(( t / 2 )) \
   compute-sanitizer --tool $tool --error-exitcode 9 python3 $ROOT/bench/results/2026-12-07-twentyfifth/san_per_key.py \
   > $R/k-$tool.log 2>&1; echo "rc $?" >> $R/k-$tool.log; done) &
wait $(jobs -p | grep -v "^$packer$")
echo "k bias tests: $(grep -E '^FAILED|^ERROR' $R/k-bias.log | head -n 8) $(tail -n 1 $R/k-bias.log)"
for tool in memcheck racecheck; do echo "k $tool: $(grep -E 'SUMMARY|^rc|^ok' $R/k-$tool.log | tr '\n' ' ')"; done
b() {  # b TREE TAG CHECK ARGS...
  local t=$1 tag=$2 check=$3; shift 3
  (cd /tmp/$t && PYTHONPATH=/tmp/$t CUFLASH_CACHE_DIR=/tmp/cc-$t timeout 60 python3 -m cuflash bench --mode fwd \
     --no-progress --peers none $check "$@" 2>&1 | grep -E " fwd " | sed "s/^/$t-$tag /" | tee -a $R/bench.txt)
}
v="--headdim 128 --seqlen 8k --causal both"
for r in 1 2; do [ $(left) -gt 60 ] || break
  c=$([ $r = 1 ] && echo "" || echo --no-check)
  b b $r --no-check $v --bias b,1,1,s; b k $r "$c" $v --bias b,1,1,s; b b plain$r --no-check $v
done
[ $(left) -gt 40 ] && { b b d256 --no-check --headdim 256 --seqlen 8k --causal both --bias b,1,1,s;
                        b k d256 "" --headdim 256 --seqlen 8k --causal both --bias b,1,1,s; }
[ $(left) -gt 40 ] && { b b fp16 --no-check --dtype fp16 $v --bias b,1,1,s; b k fp16 "" --dtype fp16 $v --bias b,1,1,s; }
[ $(left) -gt 40 ] && { b b softcap --no-check $v --bias b,1,1,s --softcap 30; b k softcap "" $v --bias b,1,1,s --softcap 30; }
kill $packer; pack
