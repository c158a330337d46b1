# Written in the thirtieth session for the next (bench/NOTES.md v41): the lean tile bookkeeping
# (kernels_cu/dev/fwd90_lean_tile_bookkeeping.patch, "lb") against HEAD ("old"), and a first look at why the thirtieth
# session's call 1 got a spilling d64 plain forward when it compiled on first use (2026-12-08-thirtieth/call2.sh has
# the full investigation). From the repo root:
#   DEADLINE=<the call's limit less 30 s> bash bench/results/next-thirtyfirst/call1.sh
# (0) the machine's NVRTC packages and libraries; fwd90_bf16_d64_full_m192n128s2 compiled on first use plain, after
#     import torch, after torch's CUDA start (2026-12-08-thirtieth/first_use.py; spills and cubin hashes);
# (1) compile old / lb: bf16 fwd90 d64 / d128, plain, causal, varlen, varlen causal (the dense A/B then runs on
#     `cuflash compile`'s cubins in both trees);
# (2) round 1: fwd_grid_ab.py d64 / d128 at 512, 1050, 2048, 4096 rows (16k tokens) beside SDPA cuDNN, then
#     cuflash bench --varlen mix, causal and not;
# (3) lean_check.py's float64 cases on lb (call_lib.sh float64_check) (many tiles per persistent CTA; d64, 128, 256, 96, 192);
# (4) on lb: the sm90 GPU tests (call_lib.sh sm90_tests) with memcheck and racecheck of lean_sanitize.py beside (call_lib.sh tests_and_sanitize);
# (5) round 2 of the dense A/B in reverse order.
# Logs under /tmp/r -> $OUT/r.tgz (bench/call_lib.sh). If lb wins: apply the patch in kernels_cu (and its test),
# delete it from kernels_cu/dev, NOTES v41's outcome, README's speed rows, CI.
. bench/call_lib.sh
H=bench/results/next-thirtyfirst
T=bench/results/2026-12-08-thirtieth
python3 -m pip list 2>/dev/null | grep -i -E "nvidia|cupy|cuda|torch |jax" > $R/packages.txt
find / -xdev -name "libnvrtc*.so*" 2>/dev/null >> $R/packages.txt
for m in plain torch cuda; do PYTHONPATH=$PWD CUFLASH_DISABLE_DISK_CACHE=1 timeout 60 python3 $T/first_use.py $m 2>&1 \
  | sort -u > $R/first-$m.txt; grep spills $R/first-$m.txt; done
make_tree lb kernels_cu/dev/fwd90_lean_tile_bookkeeping.patch
for lab in old lb; do
  compile_tree $lab --features "" --features causal --features varlen --features varlen,causal --dtypes bf16 \
    --only fwd90_bf16_d64 --only fwd90_bf16_d128 -j 8 &
done
wait $(others)
grep -h -E "spills|SERIAL| ok in" $R/compile-*.log
echo "compiled at $SECONDS s" >> $R/times.txt
for lab in old lb; do [ $(left) -gt 60 ] || break; dense $lab 512,1050,2048,4096 75; [ $(left) -gt 60 ] && varlen_mix $lab both; done
echo "round 1 done at $SECONDS s" >> $R/times.txt
float64_check lb $H/lean_check.py 150
L=$(( $(left) - 150 )); [ $L -gt 240 ] && L=240
[ $L -gt 60 ] && tests_and_sanitize lb $H/lean_sanitize.py $L
for lab in lb old; do [ $(left) -gt 80 ] || break; dense $lab 512,1050,2048,4096 75; done
echo "round 2 done at $SECONDS s" >> $R/times.txt
for f in $R/*-lean_sanitize.log; do [ -f $f ] && { echo "== $f"; tail -n 2 $f; }; done
finish
