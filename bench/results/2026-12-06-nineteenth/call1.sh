# Written 2026-12-06 (eighteenth session) for the next one: its device time went to failed starts before
# this could run. bench/NOTES.md v32: the rows' sums of P from the P V product in the warp-specialised
# Hopper forward at d128 and d64's fixed-offset softcap (kernels_cu/dev/fwd90_sums_by_mma.patch (landed in 367f151; run by the nineteenth session as call 1): FwdSm90Spec.sums_by_mma; each V slot
# followed by a column block of ones, P V with N = 136, softmax.cuh SUMS_FROM_PV: no per-score add to l).
# The patch changes cuflash/ too, so the A/B runs two copies of the tree.
# Compile-only so far: the d64 / d128 forwards of 21 feature sets spill-free under NVRTC 12.9, 13.0 and
# 13.5, the default set (346) under 12.9; CPU tests pass with it; the main loop of the plain
# kernel 592 -> 530 instructions, of the softcap-30 fixed-offset one 634 -> 504 (NVRTC 12.9).
# Prediction: plain d128 forward within +-3% (the product grows 3%, the softmax loses an FADD per
# score), softcap 30 +5-10% (the fixed offset's rounded sum goes too: two integer operations and an add).
# (a) A/B, bf16 d64 / d128 2k / 8k (d64: only its softcap kernels change), causal both, plain and softcap 30, two alternated rounds, the patched
#     tree's first round with cuflash bench's float64 check; (b) in the patched tree: Hopper forward and
#     variant tests, memcheck and racecheck of sanitize_case.py's forward section.
# From the repo root: bash bench/results/next-eighteenth/call1.sh. Logs under /tmp/r, packed into $OUT/r.tgz.
export PYTHONUNBUFFERED=1
R=/tmp/r; rm -rf $R; mkdir -p $R/ab $R/t
pack() { tar -czf $OUT/r.tgz -C $R . ; }
nvidia-smi --query-gpu=name --format=csv,noheader > $R/gpu.txt
rm -rf /tmp/pk && mkdir /tmp/pk && cp -r cuflash kernels_cu bench tests pyproject.toml /tmp/pk/ \
  && (cd /tmp/pk && patch -p1 -s < kernels_cu/dev/fwd90_sums_by_mma.patch) || exit 1
# (the patch landed in 367f151; this script ran as the nineteenth session's call 1)
args="--mode fwd --headdim 64,128 --seqlen 2k,8k --causal both --peers none --no-progress"
for r in 1 2; do
  for tree in new:/tmp/pk old:$PWD; do
    tag=${tree%%:*}; dir=${tree#*:}
    check="--no-check"; [ $tag-$r = new-1 ] && check=""
    for v in plain softcap; do
      extra=""; [ $v = softcap ] && extra="--softcap 30"
      (cd $dir && PYTHONPATH=$dir CUFLASH_CACHE_DIR=/tmp/cc-$tag timeout 120 python3 -m cuflash bench $args $check $extra \
         > $R/ab/$tag-$v-$r.log 2>&1)
    done
  done
done
pack
grep -h " fwd " $R/ab/*.log | sort
cd /tmp/pk && export PYTHONPATH=/tmp/pk OMP_NUM_THREADS=4 OPENBLAS_NUM_THREADS=4
# the tests' Hopper forward kernels compiled ahead in parallel (on first use they compile one at a time)
sets=(); for f in "" causal window softcap alibi sink window,softcap causal,softcap causal,sink window,sink softcap,alibi \
  alibi,sink softcap,sink window,alibi causal,softcap,alibi,sink window,softcap,alibi,sink; do sets+=(--features "$f"); done
CUFLASH_CACHE_DIR=/tmp/cc-t timeout 120 python3 -m cuflash compile --arch sm_90a "${sets[@]}" --only fwd90 -j 16 \
  > $R/t/compile.log 2>&1
CUFLASH_CACHE_DIR=/tmp/cc-t timeout 300 python3 -m pytest tests/gpu/test_forward.py tests/gpu/test_variants.py -k "not portable" \
  -q -rfE -p no:cacheprovider > $R/t/fwd-variants.log 2>&1 &
( CUFLASH_CACHE_DIR=/tmp/cc-t2 SANITIZE_SECTIONS=forward timeout 150 compute-sanitizer --tool memcheck --error-exitcode 9 \
    python3 bench/sanitize_case.py > $R/t/memcheck.log 2>&1
  CUFLASH_CACHE_DIR=/tmp/cc-t2 SANITIZE_SECTIONS=forward timeout 150 compute-sanitizer --tool racecheck --error-exitcode 9 \
    python3 bench/sanitize_case.py > $R/t/racecheck.log 2>&1 ) &
wait
pack
for f in $R/t/*.log; do echo "$f: $(grep -E '^FAILED|^ERROR' $f | head -n 5) $(tail -n 2 $f | tr '\n' ' ')"; done
