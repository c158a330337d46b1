#!/usr/bin/env bash
# session call 3: the folded softcap's backward with one clamp (score_mod.cuh grad) against HEAD's two,
# softcap 30 against plain (issue 9's table), the Hopper softcap/sink tests, and the tests call 1's limit cut
set -u
cd "$(dirname "$0")/../../.."
export PYTHONPATH=. PYTHONUNBUFFERED=1 CUFLASH_CACHE_DIR=/tmp/cuflash-gpu-check-cache
L=$OUT/logs; mkdir -p $L
B="python3 -m cuflash bench --headdim 64,128,256 --seqlen 2k,8k --causal both --peers none"
old() { CUFLASH_KERNELS_DIR=bench/_exp/oldk/kernels_cu CUFLASH_CACHE_DIR=/tmp/cc-old "$@"; }
# compile both trees' softcap kernels first (in parallel), then time alone
(old python3 -m cuflash compile -j 8 --only bwd90 --dtypes bf16 --features softcap --features causal,softcap > $L/compile-old.log 2>&1) &
(python3 -m cuflash compile -j 8 > $L/compile-new.log 2>&1; python3 -m cuflash compile -j 8 --only bwd90 --dtypes bf16 --features softcap --features causal,softcap >> $L/compile-new.log 2>&1) &
wait
{ for r in 1 2; do
    echo "== round $r new"; $B --mode bwd --softcap 30 --no-check --no-progress
    echo "== round $r old"; old $B --mode bwd --softcap 30 --no-check --no-progress
  done
  echo "== plain fwd,bwd"; $B --mode fwd,bwd --no-check --no-progress
  echo "== softcap 30 fwd,bwd (new tree)"; $B --mode fwd,bwd --softcap 30 --no-check --no-progress
} > $L/ab-softcap-bwd.txt 2>&1
tar czf $OUT/logs.tgz -C $OUT logs
(OMP_NUM_THREADS=4 timeout 150 python3 -m pytest tests/gpu/test_variants.py -q -rfE -p no:cacheprovider \
   -k "sm90 and softcap and not all_four" > $L/tests-softcap.log 2>&1) &
for fam in sm90 portable; do
  (OMP_NUM_THREADS=4 timeout 150 python3 -m pytest tests/gpu/test_variants.py -q -rfE -p no:cacheprovider \
     -k "$fam and (short_causal or unseen)" > $L/tests-tail-$fam.log 2>&1) &
done
wait
for f in $L/tests-*.log; do echo "$f: $(tail -n 1 $f)"; grep -h "^FAILED\|^ERROR" $f | head -5; done
grep -v "^\[" $L/ab-softcap-bwd.txt | grep -E "==|bwd|fwd" | head -80
tar czf $OUT/logs.tgz -C $OUT logs
