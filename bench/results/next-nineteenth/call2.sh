# Written 2026-12-06 (nineteenth session) for the next one: its device time went to failed starts before
# this could run. From the repo root: bash bench/results/next-nineteenth/call2.sh.
# (a) d64 / d128 softcap 30 forward, 8k, causal both, two alternated rounds: this tree against exp2 on the
# FMA pipe for 2 or 4 of every 8 exponentials at the softmax's fixed offset (NOTES v33; the e trees, their
# first round with the float64 check), and this tree's plain forward for the ratio. (b) tests: of this
# tree, those that run the d128 forward with the rows' sums from P V (367f151, NOTES v32) beside call 1's
# forward / variant tests (the four variant tests call 1's limit cut, varlen and packed on Hopper, the
# Hopper backward's default-dim tests, the torch adapter's values, SDPA and transformers tests); of the
# e4 tree, the Hopper softcap variant tests.
# Logs under /tmp/r -> $OUT/r.tgz.
# ROUNDS (default 2) alternated rounds; TESTS=0 skips (b) (the device time left).
export PYTHONUNBUFFERED=1
ROUNDS=${ROUNDS:-2}; TESTS=${TESTS:-1}
R=/tmp/r; rm -rf $R; mkdir -p $R/ab $R/t
pack() { tar -czf $OUT/r.tmp.tgz -C $R . && mv $OUT/r.tmp.tgz $OUT/r.tgz ; }
nvidia-smi --query-gpu=name --format=csv,noheader > $R/gpu.txt
# exp2 on the FMA pipe for 2 or 4 of every 8 of a row's exponentials in the softmax at a fixed offset
# (kernels_cu/dev/fwd_exp2_fma.patch: specs.FWD_SM90_EXP2_FMA_OF_8, 4 in the patch; NOTES v33); e0 is
# this tree's kernels with a cache of its own. The plain kernels are the same in every tree.
for n in 0 2 4 6; do rm -rf /tmp/e$n && mkdir /tmp/e$n && cp -r cuflash kernels_cu bench tests pyproject.toml /tmp/e$n/ \
  && { [ $n = 0 ] || (cd /tmp/e$n && patch -p1 -s < kernels_cu/dev/fwd_exp2_fma.patch); } \
  && { [ $n = 0 ] || sed -i "s/^FWD_SM90_EXP2_FMA_OF_8 = 4$/FWD_SM90_EXP2_FMA_OF_8 = $n/" /tmp/e$n/cuflash/specs.py; }
  grep -c "^FWD_SM90_EXP2_FMA_OF_8 = $n$" /tmp/e$n/cuflash/specs.py > $R/t/e$n-define.txt  # 0 for e0
  (cd /tmp/e$n && CUFLASH_CACHE_DIR=/tmp/cc-e$n PYTHONPATH=/tmp/e$n timeout 120 python3 -m cuflash compile --arch sm_90a \
     --features "" --features causal --features softcap --features causal,softcap --dtypes bf16 \
     --only fwd90_bf16_d64 --only fwd90_bf16_d128 -j 4 > $R/t/compile-e$n.log 2>&1) &
done
[ $TESTS = 1 ] && (CUFLASH_CACHE_DIR=/tmp/cc-new PYTHONPATH=$PWD timeout 120 python3 -m cuflash compile --arch sm_90a -j 16 > $R/t/compile.log 2>&1) &
wait
args="--mode fwd --headdim 64,128 --seqlen 8k --causal both --no-progress"
for r in $(seq $ROUNDS); do
  trees="e0:/tmp/e0 e2:/tmp/e2 e4:/tmp/e4 e6:/tmp/e6"; [ $r = 1 ] || trees="e0:/tmp/e0 e4:/tmp/e4"  # later rounds: k = 0, 4
  for tree in $trees; do
    tag=${tree%%:*}; dir=${tree#*:}
    vs="softcap"; [ $tag = e0 ] && vs="plain softcap"
    for v in $vs; do
      check="--no-check"; [ $r = 1 ] && [ $tag != e0 ] && check=""
      extra=""; [ $v = softcap ] && extra="--softcap 30"
      # the peers in the same run, once: cuDNN beside the plain forward, FlexAttention beside softcap
      peers="--peers none"; [ $r = 1 ] && [ $tag = e0 ] && { [ $v = plain ] && peers="--peers sdpa-cudnn" || peers="--peers flex"; }
      (cd $dir && PYTHONPATH=$dir CUFLASH_CACHE_DIR=/tmp/cc-$tag timeout 150 python3 -m cuflash bench $args $check $extra $peers \
         > $R/ab/$tag-$v-$r.log 2>&1)
    done
  done
  pack
done
grep -H " fwd " $R/ab/*.log | sed 's#.*/ab/##' | sort -k1,1
[ $TESTS = 1 ] || exit 0
export PYTHONPATH=$PWD OMP_NUM_THREADS=4 OPENBLAS_NUM_THREADS=4 CUFLASH_CACHE_DIR=/tmp/cc-new
py="python3 -m pytest -q -rfE -p no:cacheprovider"
( while sleep 15; do pack; done ) &  # a call cut by its limit still returns the logs so far
packer=$!
timeout 100 $py "tests/gpu/test_variants.py::test_short_causal_d256_on_the_persistent_grid" \
  "tests/gpu/test_variants.py::test_unseen_keys_are_never_read" tests/gpu/test_varlen.py tests/gpu/test_packed.py \
  -k "not portable" > $R/t/varlen-packed.log 2>&1 &
timeout 100 $py tests/gpu/test_backward.py -k "sm90 and (gqa or batch or strided or softmax_scale or large or fully_masked or deterministic or empty or 64bit or reversed)" \
  > $R/t/backward.log 2>&1 &
timeout 100 $py tests/gpu/test_torch.py -k "values_and_gradients or matches_sdpa or transformers or fullgraph_matches or sdpa_flash or packed_forms" \
  > $R/t/torch.log 2>&1 &
(cd /tmp/e4 && PYTHONPATH=/tmp/e4 CUFLASH_CACHE_DIR=/tmp/cc-e4 timeout 100 $py tests/gpu/test_variants.py tests/gpu/test_forward.py \
   -k "softcap and not portable" > $R/t/e4-softcap.log 2>&1) &
wait $(jobs -p | grep -v "^$packer$")
kill $packer
pack
for f in $R/t/*.log; do echo "$f: $(grep -E '^FAILED|^ERROR' $f | head -n 5) $(tail -n 1 $f)"; done
