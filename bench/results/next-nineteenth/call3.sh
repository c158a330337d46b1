# Written 2026-12-06 (nineteenth and twentieth sessions) for the next one: neither got a machine to run it.
# From the repo root: DEADLINE=<the call's limit less 30 s> bash bench/results/next-nineteenth/call3.sh.
# Steps in order of need, each only while DEADLINE seconds (default 440) leave room for it:
# (1) compile e0 (this tree) and e4 (kernels_cu/dev/fwd_exp2_fma.patch, k = 4 of every 8 exponentials on the
# FMA pipe at the softmax's fixed offset; NOTES v33), e2 and e6 when there is time;
# (2) round 1: d64 / d128 8k forward, causal both, plain (beside cuDNN) and softcap 30 (beside FlexAttention
# when there is time) in e0, softcap 30 in each e tree with the float64 check; (3) e4's Hopper softcap
# forward / variant tests; (4) round 2, e0 and e4 without peers; (5) tests of this tree that run the d128
# forward with the rows' sums from P V (367f151, NOTES v32): varlen and packed on Hopper, the Hopper
# backward's default-dim tests, some of the portable backward's (BwdRows, twenty-first session), the torch
# adapter's values, SDPA and transformers tests.
# Logs under /tmp/r -> $OUT/r.tgz, packed every 15 s.
export PYTHONUNBUFFERED=1
DEADLINE=${DEADLINE:-440}
left() { echo $((DEADLINE - SECONDS)); }
R=/tmp/r; rm -rf $R; mkdir -p $R/ab $R/t
pack() { tar -czf $OUT/r.tmp.tgz -C $R . && mv $OUT/r.tmp.tgz $OUT/r.tgz ; }
( while sleep 15; do pack; done ) &
packer=$!
nvidia-smi --query-gpu=name --format=csv,noheader > $R/gpu.txt
ks="0 4"; [ $(left) -gt 380 ] && ks="0 2 4 6"
for n in $ks; do rm -rf /tmp/e$n && mkdir /tmp/e$n && cp -r cuflash kernels_cu bench tests pyproject.toml /tmp/e$n/ \
  && { [ $n = 0 ] || (cd /tmp/e$n && patch -p1 -s < kernels_cu/dev/fwd_exp2_fma.patch); } \
  && { [ $n = 0 ] || sed -i "s/^FWD_SM90_EXP2_FMA_OF_8 = 4$/FWD_SM90_EXP2_FMA_OF_8 = $n/" /tmp/e$n/cuflash/specs.py; }
  grep -c "^FWD_SM90_EXP2_FMA_OF_8 = $n$" /tmp/e$n/cuflash/specs.py > $R/t/e$n-define.txt  # 0 for e0
  (cd /tmp/e$n && CUFLASH_CACHE_DIR=/tmp/cc-e$n PYTHONPATH=/tmp/e$n timeout 120 python3 -m cuflash compile --arch sm_90a \
     --features "" --features causal --features softcap --features causal,softcap --dtypes bf16 \
     --only fwd90_bf16_d64 --only fwd90_bf16_d128 -j 4 > $R/t/compile-e$n.log 2>&1) &
done
wait $(jobs -p | grep -v "^$packer$")
args="--mode fwd --headdim 64,128 --seqlen 8k --causal both --no-progress"
ab() {  # ab ROUND TAG VARIANT CHECK PEERS
  local dir=/tmp/$2 extra=""; [ $3 = softcap ] && extra="--softcap 30"
  (cd $dir && PYTHONPATH=$dir CUFLASH_CACHE_DIR=/tmp/cc-$2 timeout 150 python3 -m cuflash bench $args $4 $extra $5 \
     > $R/ab/$2-$3-$1.log 2>&1)
  grep -H " fwd " $R/ab/$2-$3-$1.log | sed 's#.*/ab/##'
}
ab 1 e0 plain --no-check "--peers sdpa-cudnn"
flex="--peers none"; [ $(left) -gt 280 ] && flex="--peers flex"  # FlexAttention compiles for a minute
ab 1 e0 softcap --no-check "$flex"
for n in $ks; do [ $n = 0 ] || ab 1 e$n softcap "" "--peers none"; done
if [ $(left) -gt 60 ]; then
  (cd /tmp/e4 && PYTHONPATH=/tmp/e4 CUFLASH_CACHE_DIR=/tmp/cc-e4 OMP_NUM_THREADS=4 timeout $(( $(left) > 130 ? 100 : $(left) - 30 )) \
     python3 -m pytest -q -rfE -p no:cacheprovider tests/gpu/test_variants.py tests/gpu/test_forward.py \
     -k "softcap and not portable" > $R/t/e4-softcap.log 2>&1)
  echo "e4 softcap tests: $(grep -E '^FAILED|^ERROR' $R/t/e4-softcap.log | head -n 5) $(tail -n 1 $R/t/e4-softcap.log)"
fi
if [ $(left) -gt 50 ]; then
  for v in plain softcap; do ab 2 e0 $v --no-check "--peers none"; done
  ab 2 e4 softcap --no-check "--peers none"
fi
if [ $(left) -gt 90 ]; then
  export PYTHONPATH=$PWD OMP_NUM_THREADS=4 OPENBLAS_NUM_THREADS=4 CUFLASH_CACHE_DIR=/tmp/cc-e0
  py="python3 -m pytest -q -rfE -p no:cacheprovider"; t=$(( $(left) - 20 ))
  timeout $t $py tests/gpu/test_varlen.py tests/gpu/test_packed.py -k "not portable" > $R/t/varlen-packed.log 2>&1 &
  timeout $t $py tests/gpu/test_torch.py -k "values_and_gradients or matches_sdpa or transformers" > $R/t/torch.log 2>&1 &
  timeout $t $py tests/gpu/test_backward.py -k "sm90 and (gqa or batch or strided or softmax_scale or large or empty or 64bit)" \
    > $R/t/backward.log 2>&1 &
  timeout $t $py tests/gpu/test_backward.py -k "portable and (gqa or batch or strided or shapes or deterministic)" \
    > $R/t/backward-portable.log 2>&1 &
  wait $(jobs -p | grep -v "^$packer$")
  for f in $R/t/varlen-packed.log $R/t/torch.log $R/t/backward.log $R/t/backward-portable.log; do echo "$f: $(grep -E '^FAILED|^ERROR' $f | head -n 5) $(tail -n 1 $f)"; done
fi
kill $packer; pack
