# Twenty-fourth session's next call (written when the budget left no start). From the repo root:
# DEADLINE=<the call's limit less 30 s> bash <this>; each step runs while DEADLINE leaves room.
# Trees: b = this one; bt = b with kernels_cu/dev/bwd_varlen_tma_loads.patch (NOTES vl3: the varlen Hopper
# backward, bwd_sm90_ws.cu d64 / d128, loads Q and dO of a block inside its sequence by TMA from warp 3).
# (1) bt's checks, in parallel: test_varlen.py + test_packed.py on Hopper (the patch adds
#     test_backward_tma_loads_keep_each_sequence_to_its_own_rows), then memcheck and racecheck of san_varlen_bwd.py.
# (2) Issue 11, backward, alone on the GPU: varlen equal d128 1k / 4k / 8k causal and not, b and bt alternated,
#     two rounds (bt's first with the float64 check), then the dense call on the same tokens; d64 4k once each.
# (3) kernels_cu/dev/bwd_steps.py in both trees: each kernel of the dense and the varlen backward, d128 causal 8k / 4k.
# (4) bt's `--varlen mix` backward beside FlexAttention and cuflash-padded (d128, 8k), with what time is left.
# Logs under /tmp/r -> $OUT/r.tgz, packed every 15 s.
export PYTHONUNBUFFERED=1
DEADLINE=${DEADLINE:-540}
ROOT=$PWD
left() { echo $((DEADLINE - SECONDS)); }
R=/tmp/r; rm -rf $R; mkdir -p $R
pack() { tar -czf $OUT/r.tmp.tgz -C $R . && mv $OUT/r.tmp.tgz $OUT/r.tgz ; }
( while sleep 15; do pack; done ) &
packer=$!
nvidia-smi --query-gpu=name --format=csv,noheader > $R/gpu.txt
for n in b bt; do rm -rf /tmp/$n && mkdir /tmp/$n && cp -r cuflash kernels_cu bench tests pyproject.toml /tmp/$n/; done
(cd /tmp/bt && patch -p1 -s < kernels_cu/dev/bwd_varlen_tma_loads.patch) && echo "bt patched" | tee -a $R/trees.txt
for t in b bt; do (cd /tmp/$t && PYTHONPATH=/tmp/$t CUFLASH_CACHE_DIR=/tmp/cc-$t timeout 120 python3 -m cuflash compile \
  --arch sm_90a --features varlen --features causal,varlen --features "" --features causal --dtypes bf16 \
  --only bwd90_bf16_d128 --only bwd90_bf16_d64 -j 7 > $R/compile-$t.log 2>&1) & done
wait $(jobs -p | grep -v "^$packer$")
tail -qn 1 $R/compile-*.log
export OMP_NUM_THREADS=4 OPENBLAS_NUM_THREADS=4
t=$(( $(left) > 330 ? 150 : $(left) / 2 ))
(cd /tmp/bt && PYTHONPATH=/tmp/bt CUFLASH_CACHE_DIR=/tmp/cc-bt timeout $t python3 -m pytest -q -rfE -p no:cacheprovider \
   tests/gpu/test_varlen.py tests/gpu/test_packed.py -k "not portable" > $R/bt-varlen-packed.log 2>&1) &
(cd /tmp/bt && for tool in memcheck racecheck; do PYTHONPATH=/tmp/bt CUFLASH_CACHE_DIR=/tmp/cc-bt timeout $(( t / 2 )) \
   compute-sanitizer --tool $tool --error-exitcode 9 python3 $ROOT/bench/results/2026-12-07-twentyfourth/san_varlen_bwd.py \
   > $R/bt-$tool.log 2>&1; echo "rc $?" >> $R/bt-$tool.log; done) &
wait $(jobs -p | grep -v "^$packer$")
echo "bt varlen/packed: $(grep -E '^FAILED|^ERROR' $R/bt-varlen-packed.log | head -n 5) $(tail -n 1 $R/bt-varlen-packed.log)"
for tool in memcheck racecheck; do echo "bt $tool: $(grep -E 'SUMMARY|^rc|^ok' $R/bt-$tool.log | tr '\n' ' ')"; done
b() {  # b TREE TAG MODE CHECK ARGS...
  local t=$1 tag=$2 mode=$3 check=$4; shift 4
  (cd /tmp/$t && PYTHONPATH=/tmp/$t CUFLASH_CACHE_DIR=/tmp/cc-$t timeout 90 python3 -m cuflash bench --mode $mode \
     --no-progress --peers none $check "$@" 2>&1 | grep -E " (fwd|bwd) " | sed "s/^/$t-$tag /" | tee -a $R/bench.txt)
}
v="--headdim 128 --seqlen 1k,4k,8k --causal both"
for r in 1 2; do [ $(left) -gt 100 ] || break
  c=$([ $r = 1 ] && echo "" || echo --no-check)
  b b $r bwd --no-check $v --varlen equal; b bt $r bwd "$c" $v --varlen equal
done
[ $(left) -gt 50 ] && b b dense bwd --no-check $v
[ $(left) -gt 60 ] && { b b d64 bwd --no-check --headdim 64 --seqlen 4k --causal both --varlen equal;
                        b bt d64 bwd --no-check --headdim 64 --seqlen 4k --causal both --varlen equal; }
# (3) Where the backward's time goes, kernel by kernel, dense and varlen on the same tokens (kernels_cu/dev/bwd_steps.py).
for t in b bt; do for n in 8192 4096; do [ $(left) -gt 25 ] || break
  (cd /tmp/$t && PYTHONPATH=/tmp/$t CUFLASH_CACHE_DIR=/tmp/cc-$t timeout 30 python3 kernels_cu/dev/bwd_steps.py 128 $n 1 \
     2>&1 | sed "s/^/$t /" | tee -a $R/bwd-steps.txt)
done; done
[ $(left) -gt 60 ] && (cd /tmp/bt && PYTHONPATH=/tmp/bt CUFLASH_CACHE_DIR=/tmp/cc-bt timeout $(( $(left) - 10 )) \
  python3 -m cuflash bench --mode bwd --no-progress --peers flex,cuflash-padded --headdim 128 --seqlen 8k \
  --causal both --varlen mix 2>&1 | tee $R/bt-mix.txt | grep -E " bwd ")
kill $packer; pack
