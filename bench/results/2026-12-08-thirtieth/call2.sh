# Thirtieth session, call 2: why fwd90_bf16_d64_full_m192n128s2 spilled 40 bytes when call 1 compiled it on first use
# (0.279 ms at d64 512 against 0.185 in the twenty-ninth session), while NVRTC 13.0.88 here compiles it clean.
# (1) the machine's NVRTC and CUDA packages, every libnvrtc and cuda_bf16.h on it; (2) `cuflash compile` of the d64
# plain kernels on HEAD and on "rv" (HEAD with f574948's pass_bias fold reverted, unfold.patch); (3) the same kernel
# compiled on first use in a process that imported torch first, or started torch's CUDA first (first_use.py);
# (4) fwd_grid_ab d64 on HEAD compiled on first use (after torch) and by `cuflash compile`, and on rv; (5) call 1's
# one failure (test_alibi 1x239 on the half diagonal tree) run on HEAD; (6) with the time left, the sm90 GPU tests
# on HEAD (v39's coverage: the twenty-ninth and thirtieth sessions ran them only in part).
# From the repo root: DEADLINE=<the call's limit less 30 s> bash bench/results/2026-12-08-thirtieth/call2.sh
# (400 s or more leaves the tests room).
. bench/call_lib.sh
S=bench/results/2026-12-08-thirtieth
python3 -m pip list 2>/dev/null | grep -i -E "nvidia|cupy|cuda|torch |jax" > $R/packages.txt
python3 -c "from cuflash.compile import nvrtc; print(nvrtc.nvrtc_version())" >> $R/packages.txt 2>&1
find / -xdev \( -name "libnvrtc*.so*" -o -name "cuda_bf16.h" \) 2>/dev/null >> $R/packages.txt
make_tree rv $S/unfold.patch
for lab in old rv; do compile_tree $lab --dtypes bf16 --only fwd90_bf16_d64_full -j 4; grep -E "^fwd90" $R/compile-$lab.log | sed "s/^/$lab /"; done
for m in plain torch cuda; do PYTHONPATH=$PWD CUFLASH_DISABLE_DISK_CACHE=1 python3 $S/first_use.py $m 2>&1 | sort -u | tee $R/first-$m.txt; done
ab64() { (cd $(tree $1) && PYTHONPATH=$(tree $1) CUFLASH_CACHE_DIR=$2 SEQLENS=512,1050,4096 PEER=cudnn timeout 40 \
  python3 kernels_cu/dev/fwd_grid_ab.py $3 64 2>&1 | grep -v "causal=1" | tee -a $R/dense.txt); }
ab64 old /tmp/cc-first old-first-use; ab64 old /tmp/cc-old old-cli; ab64 rv /tmp/cc-rv rv-cli
CUFLASH_CACHE_DIR=/tmp/cc-old timeout 60 python3 -m pytest tests/gpu/test_variants.py -q -rfE -p no:cacheprovider \
  -k "test_alibi and sm90" 2>&1 | tail -15 > $R/alibi.txt; tail -3 $R/alibi.txt
L=$(( $(left) - 15 )); [ $L -gt 60 ] && CUFLASH_CACHE_DIR=/tmp/cc-old sm90_tests $L
finish
