# Written 2026-12-06 (nineteenth session) for the next one: its device time went to failed starts before
# this could run. From the repo root: bash bench/results/next-nineteenth/call2.sh.
# After landing the rows' sums from P V at d128 (367f151,
# NOTES v32). (a) d64 / d128 forward, plain and softcap 30, 8k, causal both, two alternated rounds: this
# tree against exp2 on the FMA pipe for 2 or 4 of every 8 exponentials in every forward (NOTES v33; the e
# trees, their first round with the float64 check). (An A/B against the kernels before the sums, 5f453be, was planned
# here too and cut for the device time left.) (b) tests of this
# tree that run the d128 forward beside the forward / variant tests of call 1: the four variant tests
# call 1's limit cut, varlen and packed (Hopper), the Hopper backward's default-dim tests, the torch
# adapter's values, SDPA and transformers tests.
# Logs under /tmp/r -> $OUT/r.tgz.
# ROUNDS (default 2) alternated rounds; TESTS=0 skips (b) (the device time left).
export PYTHONUNBUFFERED=1
ROUNDS=${ROUNDS:-2}; TESTS=${TESTS:-1}
R=/tmp/r; rm -rf $R; mkdir -p $R/ab $R/t
pack() { tar -czf $OUT/r.tmp.tgz -C $R . && mv $OUT/r.tmp.tgz $OUT/r.tgz ; }
nvidia-smi --query-gpu=name --format=csv,noheader > $R/gpu.txt
# exp2 on the FMA pipe for 2 or 4 of every 8 of a row's exponentials (softmax.cuh CUFLASH_EXP2_FMA_OF_8,
# NOTES v33): copies of this tree with that default
# (kernels_cu/dev/fwd_exp2_fma.patch; e0 is this tree's kernels, with a cache of its own)
for n in 0 2 4; do rm -rf /tmp/e$n && mkdir /tmp/e$n && cp -r cuflash kernels_cu bench tests pyproject.toml /tmp/e$n/ \
  && { [ $n = 0 ] || (cd /tmp/e$n && patch -p1 -s < kernels_cu/dev/fwd_exp2_fma.patch); } \
  && sed -i "s/^#define CUFLASH_EXP2_FMA_OF_8 0$/#define CUFLASH_EXP2_FMA_OF_8 $n/" /tmp/e$n/kernels_cu/common/softmax.cuh
  grep -c "EXP2_FMA_OF_8 $n" /tmp/e$n/kernels_cu/common/softmax.cuh > $R/t/e$n-define.txt  # 0 for e0
  (cd /tmp/e$n && CUFLASH_CACHE_DIR=/tmp/cc-e$n PYTHONPATH=/tmp/e$n timeout 120 python3 -m cuflash compile --arch sm_90a \
     --features "" --features causal --features softcap --features causal,softcap --dtypes bf16 \
     --only fwd90_bf16_d64 --only fwd90_bf16_d128 -j 4 > $R/t/compile-e$n.log 2>&1) &
done
[ $TESTS = 1 ] && (CUFLASH_CACHE_DIR=/tmp/cc-new PYTHONPATH=$PWD timeout 120 python3 -m cuflash compile --arch sm_90a -j 16 > $R/t/compile.log 2>&1) &
wait
args="--mode fwd --headdim 64,128 --seqlen 8k --causal both --peers none --no-progress"
for r in $(seq $ROUNDS); do
  for tree in e0:/tmp/e0 e2:/tmp/e2 e4:/tmp/e4; do
    tag=${tree%%:*}; dir=${tree#*:}
    vs="plain softcap"
    for v in $vs; do
      check="--no-check"; [ $r = 1 ] && [ $tag != e0 ] && check=""
      extra=""; [ $v = softcap ] && extra="--softcap 30"
      (cd $dir && PYTHONPATH=$dir CUFLASH_CACHE_DIR=/tmp/cc-$tag timeout 90 python3 -m cuflash bench $args $check $extra \
         > $R/ab/$tag-$v-$r.log 2>&1)
    done
  done
done
pack
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
wait $(jobs -p | grep -v "^$packer$")
kill $packer
pack
for f in $R/t/*.log; do echo "$f: $(grep -E '^FAILED|^ERROR' $f | head -n 5) $(tail -n 1 $f)"; done
