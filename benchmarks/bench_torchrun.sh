#!/usr/bin/env bash
# Sharding on one CPU machine: 2 torchrun ranks × 1 thread against 1 process × 2 threads, N images
# (default 1000) of n100-100-10, random targets. Run by hand from the repository root:
#   bash benchmarks/bench_torchrun.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000}
OUT=$(mktemp -d)
export BLINDSPOT_CACHE="$OUT/cache"
run() { local start end; start=$(date +%s.%N); "$@" > /dev/null 2>&1; end=$(date +%s.%N); .venv/bin/python -c "print(f'{$end - $start:.1f}')"; }
one=$(run .venv/bin/blindspot attack --model n100-100-10 -n "$N" --device cpu --threads 2 --out "$OUT/one" --json)
two=$(OMP_NUM_THREADS=1 run .venv/bin/torchrun --standalone --nproc-per-node 2 -m blindspot attack --model n100-100-10 \
      -n "$N" --device cpu --threads 1 --out "$OUT/two" --json)
echo "| N | 1 process × 2 threads | 2 ranks × 1 thread (torchrun, gloo) | ratio |"
echo "|---|---|---|---|"
.venv/bin/python -c "print(f'| $N | $one s | $two s | {$one / $two:.2f}× |')"
rm -rf "$OUT"
