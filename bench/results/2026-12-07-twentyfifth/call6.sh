# Twenty-fifth session, call 6: ncu of the d128 8k forward, plain / per-key bias / full bias (ncu_per_key.py).
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD CUFLASH_CACHE_DIR=/tmp/cc
D=bench/results/2026-12-07-twentyfifth
timeout 200 ncu --profile-from-start off --section SpeedOfLight --section ComputeWorkloadAnalysis \
  --section WarpStateStats --section SchedulerStats --section InstructionStats --section LaunchStats \
  --section Occupancy --section MemoryWorkloadAnalysis python3 $D/ncu_per_key.py > $OUT/ncu.txt 2>&1
echo "rc $?"; grep -E "case|cuflash_fwd|Duration|Issue Slots Busy|Warp Cycles Per Issued|Executed Ipc A|Compute \(SM\) Th|Memory Thro|Registers Per|Dynamic Shared|Block Size|Grid Size|No Eligible" $OUT/ncu.txt | head -80
