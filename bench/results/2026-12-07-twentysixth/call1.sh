# Twenty-sixth session, call 1: the warp-specialised forward on two CTAs per SM (64-row tiles, one consumer
# warpgroup each; FwdSm90Tiles ctas_per_sm=2 with stages).
# (1) c2_check.py: float64 check of the 64-row c2 tiles (d64 64x128c2, d128 64x64c2), dense, causal, windows,
#     GQA, softcap, sink, ALiBi, varlen with empty and one-row sequences; prints the kernels that ran.
# (2) narrow windows at 16k (kernels_cu/dev/fwd_grid_ab.py WINDOWS): today's tiles against c2, two rounds.
# (3) short dense calls 512 / 1k / 2k beside SDPA cuDNN: today's tiles against c2 (and d64 non-causal 128x128).
# Logs under /tmp/r -> $OUT/r.tgz, packed every 15 s. DEADLINE = the call's limit less 30 s.
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD CUFLASH_CACHE_DIR=/tmp/cc
DEADLINE=${DEADLINE:-540}
left() { echo $((DEADLINE - SECONDS)); }
R=/tmp/r; rm -rf $R; mkdir -p $R
pack() { tar -czf $OUT/r.tmp.tgz -C $R . && mv $OUT/r.tmp.tgz $OUT/r.tgz ; }
( while sleep 15; do pack; done ) &
packer=$!
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader > $R/gpu.txt
AB=kernels_cu/dev/fwd_grid_ab.py
timeout 200 python3 bench/results/2026-12-07-twentysixth/c2_check.py 2>&1 | tee $R/check.txt | grep -E "FAIL|kernels|failures"
W=WINDOWS=128:0,256:0,512:0,1024:0
for r in 1 2; do [ $(left) -gt 150 ] || break
  env $W timeout 60 python3 $AB base 128 2>&1 | tee -a $R/windows.txt
  env $W TILES=128:64x64c2 timeout 60 python3 $AB c2 128 2>&1 | tee -a $R/windows.txt
  env $W timeout 60 python3 $AB base 64 2>&1 | tee -a $R/windows.txt
  env $W NARROW=0 TILES=64:64x64c2 timeout 60 python3 $AB c2-64 64 2>&1 | tee -a $R/windows.txt
  env $W NARROW=0 TILES=64:64x128c2 timeout 60 python3 $AB c2-128 64 2>&1 | tee -a $R/windows.txt
done
S="SEQLENS=512,1024,2048 PEER=cudnn"
for r in 1 2; do [ $(left) -gt 60 ] || break
  env $S timeout 60 python3 $AB base 64,128 2>&1 | tee -a $R/short.txt
  env $S TILES=64:64x128c2,128:64x64c2 SHORT_TILES=64:64x128c2 timeout 60 python3 $AB c2 64,128 2>&1 | tee -a $R/short.txt
  env $S TILES=64:128x128 timeout 60 python3 $AB m128 64 2>&1 | tee -a $R/short.txt
done
kill $packer; pack
