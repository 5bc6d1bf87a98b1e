#!/usr/bin/env bash
# Shared-machine cost: the attack, bounds and units alone and beside a second CPU-bound process.
# usage: benchmarks/bench_contention.sh [N]      (run by hand on an otherwise idle machine)
# Prints a markdown table: wall seconds idle, beside a busy loop, and two copies at once, for
# libgomp's own default wait policy (torch imported before blindspot: the behaviour before issue 12)
# and blindspot's policy (GOMP_SPINCOUNT=3000 set when `engines` is imported before torch, one thread per idle core).
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-300}"
NEW=(.venv/bin/blindspot)
OLD=(env -u GOMP_SPINCOUNT .venv/bin/python -c "import torch, sys; from blindspot.cli import main; sys.exit(main(sys.argv[1:]))")
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"; kill $(jobs -p) 2>/dev/null || true' EXIT

timed() {  # timed NAME CMD... -> seconds
    local name="$1"; shift
    local t0; t0=$(date +%s.%N)
    "$@" >/dev/null 2>&1
    echo "$(echo "$(date +%s.%N) - $t0" | bc -l)"
}

attack() { "${BS[@]}" attack --model n100-100-10 --n "$N" --target random --seed 1 --device cpu --out "$OUT/a-$RANDOM$RANDOM" "${EXTRA[@]}"; }
conv() { "${BS[@]}" attack --model conv --n 30 --target random --seed 1 --device cpu --out "$OUT/c-$RANDOM$RANDOM" "${EXTRA[@]}"; }
bounds() { "${BS[@]}" bounds --model n200-200-10 --device cpu "${EXTRA[@]}"; }
units() { "${BS[@]}" units --model n100-100-10 --layer act1 --no-cache --device cpu --out "$OUT/u-$RANDOM$RANDOM" "${EXTRA[@]}"; }

busy() { python3 -c "while True: pass" >/dev/null 2>&1 & echo $!; }

echo "| job | wait policy | idle s | beside a busy loop s | two at once s (each) |"
echo "|---|---|---|---|---|"
for job in attack conv bounds units; do
    for policy in libgomp-default blindspot; do
        if [ "$policy" = blindspot ]; then BS=("${NEW[@]}"); EXTRA=(); else BS=("${OLD[@]}"); EXTRA=(--threads "$(nproc)"); fi
        idle=$(timed idle $job)
        pid=$(busy); sleep 0.5
        loaded=$(timed loaded $job)
        kill "$pid"; wait "$pid" 2>/dev/null || true
        t0=$(date +%s.%N)
        ( $job >/dev/null 2>&1 ) & p1=$!
        ( $job >/dev/null 2>&1 ) & p2=$!
        wait $p1 $p2
        pair=$(echo "$(date +%s.%N) - $t0" | bc -l)
        printf "| %s | %s | %.1f | %.1f | %.1f |\n" "$job" "$policy" "$idle" "$loaded" "$pair"
    done
done
