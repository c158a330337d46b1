# bench/call_lib.sh: the start of a device call script (bench/results/*/call*.sh), sourced from the repo root:
#   . bench/call_lib.sh
# Logs go under $R (/tmp/r), archived to $OUT/r.tgz every 15 s, so a call cut by its time limit still
# returns what it wrote. left: the seconds to $DEADLINE (default 540; the call's limit less ~30 s);
# others: the pids of the background jobs but the packer (wait $(others)); finish: the last archive.
# $R/gpu.txt names the card and its clock.
export PYTHONUNBUFFERED=1
DEADLINE=${DEADLINE:-540}
left() { echo $((DEADLINE - SECONDS)); }
R=/tmp/r
rm -rf $R && mkdir -p $R
pack() { tar -czf $OUT/r.tmp.tgz -C $R . && mv $OUT/r.tmp.tgz $OUT/r.tgz; }
( while sleep 15; do pack; done ) &
packer=$!
others() { jobs -p | grep -v "^$packer$"; }
finish() { kill $packer; pack; }
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader > $R/gpu.txt 2>&1
