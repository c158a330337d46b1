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
# tree LAB: the source tree of label LAB, the repo ("old") or /tmp/LAB; make_tree LAB PATCH...: /tmp/LAB as a
# copy of the repo with the patches applied in order (each named in $R/patched.txt); compile_tree LAB
# ARGS...: `cuflash compile ARGS` in LAB's tree into /tmp/cc-LAB, its log $R/compile-LAB.log (run them with
# & and wait $(others) to compile the trees side by side).
tree() { case $1 in old) echo $PWD ;; *) echo /tmp/$1 ;; esac; }
make_tree() { local lab=$1 p; shift
  rm -rf /tmp/$lab && mkdir /tmp/$lab && cp -r cuflash kernels_cu tests bench pyproject.toml /tmp/$lab/
  for p in "$@"; do (cd /tmp/$lab && patch -p1 -s < $p && echo "$lab: $p" >> $R/patched.txt); done; }
compile_tree() { local lab=$1 t; shift; t=$(tree $lab)
  (cd $t && PYTHONPATH=$t CUFLASH_CACHE_DIR=/tmp/cc-$lab timeout 120 python3 -m cuflash compile "$@" > $R/compile-$lab.log 2>&1); }
