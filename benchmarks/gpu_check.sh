#!/usr/bin/env bash
# The GPU check, for a bare GPU machine: no install step, the repository on PYTHONPATH.
#   bash benchmarks/gpu_check.sh part1 --out DIR [--work SCRATCH]     (each part under 5 minutes on one H100/H200)
#   bash benchmarks/gpu_check.sh part2 --out DIR [--work SCRATCH]
#   bash benchmarks/gpu_check.sh --device cpu --tiny --out DIR        (both parts on the CPU at toy sizes: CI)
# part1: GPU-marked tests; n200-200-10 on 10,000 images with --target all (seconds, chosen batch, peak memory);
#        the same on 300 images on cpu and cuda (like-for-like ratio); under torchrun when there are several GPUs.
# part2: conv on 512 images, cuda with TF32 off and on, and the CPU (first 128 images); ResNet-50 224 px on 64
#        images at a small budget, extrapolated to 256 images at 9 × 100; foolbox DDN when foolbox imports.
# Prints the torch version, the GPU and the precision flags, then one markdown table per part; writes
# DIR/partN.md and DIR/partN.json. Exit 1 when a row failed or timed out, 2 when asked for cuda without one.
# Python: $PY, else .venv/bin/python when the repository has one, else python3 (the bare machine's).
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
part=all
args=()
for a in "$@"; do
  case "$a" in
    part1|part2|all) part=$a ;;
    *) args+=("$a") ;;
  esac
done
exec "$PY" benchmarks/gpu_check.py "$part" "${args[@]}"
