#!/usr/bin/env bash
# One GPU check, run by hand on a machine with CUDA (under 8 minutes on one H100/H200):
#   bash benchmarks/gpu_check.sh            (from the repository root, with the venv installed)
# Runs every GPU-marked test and the GPU figures the README quotes, and prints one markdown table.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
BS=${BS:-.venv/bin/blindspot}
OUT=${OUT:-runs/gpu-check}
rm -rf "$OUT" && mkdir -p "$OUT"
export BLINDSPOT_CACHE="$OUT/cache"
rows=()
row() { rows+=("| $1 | $2 | $3 | $4 |"); }
elapsed() { "$PY" -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$2"; }
secs() { "$PY" -c "import json,sys; d=json.load(open(sys.argv[1])); print(d.get('seconds', d.get('seconds', '?')))" "$1" 2>/dev/null || echo "?"; }

card=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
gpus=$(nvidia-smi -L 2>/dev/null | wc -l)

t0=$(date +%s.%N)
if timeout 180 .venv/bin/pytest -q -p no:cacheprovider -m gpu > "$OUT/gpu-tests.txt" 2>&1; then r=pass; else r=FAIL; fi
t1=$(date +%s.%N)
row "GPU-marked tests" "$(tail -1 "$OUT/gpu-tests.txt")" "$(elapsed "$t0" "$t1") s" "$r"

timeout 240 "$BS" attack --model n200-200-10 -n 10000 --target all --device cuda --out "$OUT/attack10k" --json > "$OUT/attack10k.json" 2> "$OUT/attack10k.err"
row "attack n200-200-10, 10,000 test images, --target all" "goal < 60 s (H100)" "$(secs "$OUT/attack10k.json") s" \
    "$("$PY" -c "import json; d=json.load(open('$OUT/attack10k.json')); print(f\"success {100*d['success_rate']:.1f} %, distortion {d['mean_distortion']:.4f}\")" 2>/dev/null)"

timeout 60 "$BS" bounds --model alexnet --device cuda --json > "$OUT/bounds.json" 2> "$OUT/bounds.err"
row "bounds AlexNet 224 px" "goal < 2 s" "$("$PY" -c "import json; print(round(json.load(open('$OUT/bounds.json'))['seconds'], 2))" 2>/dev/null) s" "float64"

t0=$(date +%s.%N)
timeout 300 "$BS" reproduce --quick --device cuda --out "$OUT/reproduce" --json > "$OUT/reproduce.json" 2> "$OUT/reproduce.err"; rc=$?
t1=$(date +%s.%N)
row "reproduce --quick on cuda" "wall, empty cache" "$(elapsed "$t0" "$t1") s" "exit $rc"

timeout 600 "$PY" benchmarks/bench_attack_imagenet.py --model resnet50 --n 256 --device cuda --skip-advertorch > "$OUT/resnet50.txt" 2>&1
row "ResNet-50 224 px, 256 images, random targets, 9×100" "goal < 600 s" "$(grep '^| blindspot' "$OUT/resnet50.txt" | awk -F'|' '{print $5}') s" "$(grep '^| blindspot' "$OUT/resnet50.txt" | awk -F'|' '{print "success" $3}')"

if [ "${gpus:-1}" -gt 1 ]; then
  t0=$(date +%s.%N)
  timeout 240 .venv/bin/torchrun --standalone --nproc-per-node "$gpus" -m blindspot attack --model n200-200-10 -n 10000 \
      --target all --device cuda --out "$OUT/attack10k-ranks" --json > "$OUT/attack10k-ranks.json" 2> "$OUT/attack10k-ranks.err"
  row "same attack, torchrun on $gpus GPUs" "images/s per GPU" "$(secs "$OUT/attack10k-ranks.json") s" ""
fi

echo "GPU check on ${card:-unknown card} × ${gpus:-0}, $(date -u +%Y-%m-%d)"
echo
echo "| check | goal / note | measured | result |"
echo "|---|---|---|---|"
printf '%s\n' "${rows[@]}"
