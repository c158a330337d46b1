# Written 2026-12-06 (fifteenth session) for the next one: what that session's device budget left untimed.
# (a) NOTES dr6 on the backward: the working tree against ab/pre-dr6 (prepare.sh), Hopper dropout backward
#     d64/d128 2k/8k, two alternated rounds (the forward gained 1.6-3.1% on an H100; the backward's
#     machine code lost 16-32 instructions, predicted within 1%).
# (b) The portable dropout backward the same way (CUFLASH_DISABLE_SM90=1), one round.
# Logs under /tmp/r, packed into $OUT/r.tgz after each part: the device tool returns at most 8 files.
export PYTHONPATH=. PYTHONUNBUFFERED=1
R=/tmp/r; mkdir -p $R
pack() { tar -czf $OUT/r.tgz -C $R . ; }
nvidia-smi --query-gpu=name --format=csv,noheader > $R/gpu.txt
CUFLASH_CACHE_DIR=/tmp/cc-ab timeout 240 bash bench/ab_kernels.sh $R/hopper ab/pre-dr6/kernels_cu 2 -- \
  --mode bwd --headdim 64,128 --seqlen 2k,8k --causal both --dropout 0.1 --peers none --no-check 2>&1 | tail -n 10
pack
CUFLASH_DISABLE_SM90=1 CUFLASH_CACHE_DIR=/tmp/cc-abp timeout 200 bash bench/ab_kernels.sh $R/portable ab/pre-dr6/kernels_cu 1 -- \
  --mode fwd,bwd --headdim 64,128 --seqlen 8k --causal both --dropout 0.1 --peers none --no-check 2>&1 | tail -n 10
pack
