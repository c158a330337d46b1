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
# device copy of the working tree carries it when it is not git-ignored).
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
old=$(cd "$old" && pwd)
for ((r = 1; r <= rounds; r++)); do
  for tree in new old; do
    dir=""; [ $tree = old ] && dir=$old
    # Separate kernel caches: the source hash keys the cache anyway, this keeps either tree's
    # first call from paying the other's compile.
    CUFLASH_KERNELS_DIR=$dir CUFLASH_CACHE_DIR=${CUFLASH_CACHE_DIR:-/tmp/cuflash-ab}-$tree \
      python3 -m cuflash bench "$@" --no-progress --json "$out/$tree-$r.json" > "$out/$tree-$r.log" 2>&1 \
      || { echo "ab_kernels: the $tree run $r failed:"; tail -n 5 "$out/$tree-$r.log"; }
  done
done
python3 - "$out" "$rounds" <<'EOF'
import json, sys
out, rounds = sys.argv[1], int(sys.argv[2])
runs = [(f"{t}-{r}", f"{out}/{t}-{r}.json") for r in range(1, rounds + 1) for t in ("new", "old")]
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
print("point".ljust(40), *(n.rjust(8) for n in names), "old/new".rjust(8))
for key, ms in table.items():
    new = [ms[n] for n in names if n.startswith("new") and ms.get(n)]
    old = [ms[n] for n in names if n.startswith("old") and ms.get(n)]
    ratio = f"{min(old) / min(new):.3f}" if new and old else "-"
    print(key.ljust(40), *(f"{ms[n]:.3f}".rjust(8) if ms.get(n) else "-".rjust(8) for n in names), ratio.rjust(8))
EOF
