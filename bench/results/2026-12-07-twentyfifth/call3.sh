# Twenty-fifth session, call 3: where the borderline issue targets stand on this machine, and the decode split probe.
# (1) kernels_cu/dev/decode_splits.py: split counts that fill every CTA slot unevenly against the launcher's even ones
#     (1 x 128k, 2 x 64k, 8 x 32k, 4 x 32k), tiles 12x2, 8x3, 4x3, SDPA cuDNN in the same run (issue 12).
# (2) cuflash bench --mode decode with SDPA cuDNN and flash (issue 12's table).
# (3) bf16 512 / 1k, d 64 / 128 / 256, causal both, fwd and bwd beside SDPA cuDNN and flash, no check (issue 14's
#     short points).
# (4) d128 8k forward plain and softcap 30, twice alternated (issue 9).
# Logs under /tmp/r -> $OUT/r.tgz, packed every 15 s. DEADLINE = the call's limit less 30 s.
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD CUFLASH_CACHE_DIR=/tmp/cc
DEADLINE=${DEADLINE:-540}
left() { echo $((DEADLINE - SECONDS)); }
R=/tmp/r; rm -rf $R; mkdir -p $R
pack() { tar -czf $OUT/r.tmp.tgz -C $R . && mv $OUT/r.tmp.tgz $OUT/r.tgz ; }
( while sleep 15; do pack; done ) &
packer=$!
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader > $R/gpu.txt
timeout 150 python3 kernels_cu/dev/decode_splits.py 2>&1 | tee $R/decode-splits.txt
[ $(left) -gt 120 ] && timeout $(( $(left) > 200 ? 110 : 60 )) python3 -m cuflash bench --mode decode --no-progress \
  --peers sdpa-cudnn,sdpa-flash 2>&1 | tee $R/decode-bench.txt | grep -E "x|TB"
[ $(left) -gt 100 ] && timeout $(( $(left) - 60 )) python3 -m cuflash bench --mode fwd,bwd --no-progress --no-check \
  --peers sdpa-cudnn,sdpa-flash --headdim 64,128,256 --seqlen 512,1k --causal both 2>&1 | tee $R/short.txt | grep -E " (fwd|bwd) "
for r in 1 2; do [ $(left) -gt 25 ] || break
  for sc in "" "--softcap 30"; do timeout 40 python3 -m cuflash bench --mode fwd --no-progress --no-check --peers none \
    --headdim 128 --seqlen 8k --causal both $sc 2>&1 | grep -E " fwd " | sed "s/^/r$r ${sc:-plain} /" | tee -a $R/softcap.txt; done
done
kill $packer; pack
