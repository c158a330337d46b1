#!/usr/bin/env bash
# Call 1: the portable d256 backward against SDPA flash (ncu, tiles), and the sanitizer on the
# backward section (a lone softcap now in it), both families.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 CUFLASH_CACHE_DIR=/tmp/cc
o=$OUT
pack() { tar -czf $OUT/logs.tgz -C $o --exclude logs.tgz . 2>/dev/null; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv > $o/info.txt
timeout 170 python3 bench/tune_bwd.py --headdim 256 --seqlen 1k,2k,8k \
  --tiles 64x64x8x2x2x2u4,64x64x8x2x2x2u8,64x64x8x2x2x2x32u4,64x64x8x2x4x4u4 > $o/tune-d256.txt 2>&1
pack
CUFLASH_DISABLE_SM90=1 timeout 120 ncu --profile-from-start off -k regex:"cuflash_bwd$|flash_bwd_dq_dk_dv" \
  --section SpeedOfLight --section WarpStateStats --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
  --section InstructionStats --section Occupancy --section LaunchStats \
  --metrics smsp__inst_executed.sum,smsp__inst_executed_op_ldsm.sum,l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum,l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_st.sum,smsp__sass_inst_executed_op_shared_ld.sum,smsp__sass_inst_executed_op_shared_st.sum,smsp__sass_inst_executed_op_global_red.sum \
  python3 kernels_cu/dev/ncu_bwd_portable.py 256:2048 128:2048 > $o/ncu-bwd-portable.txt 2>&1
pack
for fam in 0 1; do
  SANITIZE_SECTIONS=backward CUFLASH_DISABLE_SM90=$fam timeout 100 compute-sanitizer --tool memcheck --error-exitcode 9 \
    python3 bench/sanitize_case.py > $o/memcheck-bwd-$fam.log 2>&1; echo "memcheck bwd disable_sm90=$fam rc=$?" >> $o/summary.txt
  pack
done
SANITIZE_SECTIONS=backward timeout 120 compute-sanitizer --tool racecheck --error-exitcode 9 \
  python3 bench/sanitize_case.py > $o/racecheck-bwd-0.log 2>&1; echo "racecheck bwd rc=$?" >> $o/summary.txt
pack
cat $o/summary.txt; tail -3 $o/memcheck-bwd-*.log $o/racecheck-bwd-0.log
