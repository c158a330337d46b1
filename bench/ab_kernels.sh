#!/usr/bin/env bash
# A/B timing of two kernel trees in one call: `cuflash bench` with the working
# tree's kernels_cu/ ("new") and with the kernels_cu/ of a git revision ("old"),
# alternated ROUNDS times (new, old, new, old, ...) so that clock drift shows as
# the spread between rounds of one tree rather than as a difference between trees.
#
#   bench/ab_kernels.sh OUTDIR OLD_KERNELS_DIR [ROUNDS] -- BENCH_ARGS...
#
# OLD_KERNELS_DIR: a kernels_cu/ folder of the old tree (on the CPU side:
# `git archive REV kernels_cu | tar -x -C DIR` puts it at DIR/kernels_cu; the
# device copy of the working tree carries it when it is not git-ignored), or a
# comma list of such folders: each tree is then named by the folder above its
# kernels_cu/ (ab/mid/kernels_cu: "mid") and runs in every round after "new".
# Each run writes OUTDIR/{new,old}-N.log and .json; the last lines printed are
# the ms column of every run side by side, one row per benchmark point.
set -uo pipefail
out=${1:?usage: bench/ab_kernels.sh OUTDIR OLD_KERNELS_DIR [ROUNDS] -- BENCH_ARGS...}
old=${2:?usage: bench/ab_kernels.sh OUTDIR OLD_KERNELS_DIR [ROUNDS] -- BENCH_ARGS...}
shift 2
rounds=2
if [ $# -gt 0 ] && [ "$1" != "--" ]; then rounds=$1; shift; fi
[ "${1:-}" = "--" ] && shift
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONPATH=. PYTHONUNBUFFERED=1
declare -A dirs=([new]="")
trees=(new)
IFS=, read -ra olds <<< "$old"
for d in "${olds[@]}"; do
  d=$(cd "$d" && pwd)
  name=old; [ ${#olds[@]} -gt 1 ] && name=$(basename "$(dirname "$d")")
  dirs[$name]=$d; trees+=("$name")
done
for ((r = 1; r <= rounds; r++)); do
  for tree in "${trees[@]}"; do
    dir=${dirs[$tree]}
    # Separate kernel caches: the source hash keys the cache anyway, this keeps either tree's
    # first call from paying the other's compile.
    CUFLASH_KERNELS_DIR=$dir CUFLASH_CACHE_DIR=${CUFLASH_CACHE_DIR:-/tmp/cuflash-ab}-$tree \
      python3 -m cuflash bench "$@" --no-progress --json "$out/$tree-$r.json" > "$out/$tree-$r.log" 2>&1 \
      || { echo "ab_kernels: the $tree run $r failed:"; tail -n 5 "$out/$tree-$r.log"; }
  done
done
python3 - "$out" "$rounds" "${trees[@]}" <<'EOF'
import json, sys
out, rounds, trees = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
runs = [(f"{t}-{r}", f"{out}/{t}-{r}.json") for r in range(1, rounds + 1) for t in trees]
table = {}
for name, path in runs:
    try:
        rows = json.load(open(path))["rows"]
    except (OSError, ValueError, KeyError):
        continue
    for row in rows:
        key = f"{row['label']} {row['variant']}".strip()
        table.setdefault(key, {})[name] = row["results"]["cuflash"].get("ms")
names = [n for n, _ in runs]
# old/new: the fastest round of each other tree over the fastest of "new" (> 1: new is faster).
print("point".ljust(40), *(n.rjust(8) for n in names), *(f"{t}/new".rjust(8) for t in trees[1:]))
for key, ms in table.items():
    best = {t: min((ms[n] for n in names if n.rsplit("-", 1)[0] == t and ms.get(n)), default=None) for t in trees}
    ratios = [f"{best[t] / best['new']:.3f}" if best[t] and best["new"] else "-" for t in trees[1:]]
    print(key.ljust(40), *(f"{ms[n]:.3f}".rjust(8) if ms.get(n) else "-".rjust(8) for n in names),
          *(r.rjust(8) for r in ratios))
EOF
