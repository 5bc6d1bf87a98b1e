#!/usr/bin/env bash
# Run the blindspot workbench inside tmux at a given size, send keys, and capture the pane as text,
# so that anyone can see how the app behaves in a real terminal (and whether it ever freezes).
#
# usage: scripts/tmux_demo.sh [-s WIDTHxHEIGHT] [-o OUT_DIR] [-g GRAPHICS] [-m MATRIX_JSON] [-n] [STEP ...]
#
# Without STEPs it runs the walkthrough of issue 7: pick n100-100-10, attack 100 images while the
# progress streams, open the gallery of a layer and enlarge an image, open a transfer matrix and
# drill into a cell, view the frame bounds, quit.
# With -n it runs a new user's session (issue 15) instead: load a torchvision ResNet-18 with weights
# from a local file and a folder of the user's own images, attack 32 of them, cancel, resume in the
# app, reopen the finished run from Runs and page through its examples, open the gallery of a conv
# layer, quit; start the app again and find the same model and data selected. A STEP is one of
#   KEY          a tmux key name: 3, s, Enter, Down, Escape, C-p ...
#   type:TEXT    type TEXT literally
#   sleep:SEC    wait
#   wait:TEXT    wait (at most $WAIT_TIMEOUT s, default 120) until TEXT is on screen; fail otherwise
#   snap:NAME    save the pane to OUT_DIR/NAME.txt
#   alive:KEY:TEXT  press KEY and require TEXT on screen within 2 s (the UI answers while jobs run)
# Every capture is also appended to OUT_DIR/log.txt with the time since the start. The app runs in
# OUT_DIR, so its run folders land in OUT_DIR/runs, and keeps its settings in OUT_DIR/config (not the user's).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SIZE="80x24"
OUT="${TMPDIR:-/tmp}/blindspot-tmux"
GRAPHICS="halfblock"
MATRIX=""
NEWUSER=""
while getopts "s:o:g:m:nh" opt; do
    case "$opt" in
        s) SIZE="$OPTARG" ;;
        o) OUT="$OPTARG" ;;
        g) GRAPHICS="$OPTARG" ;;
        m) MATRIX="$OPTARG" ;;
        n) NEWUSER=1 ;;
        *) sed -n '2,21p' "$0"; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
WIDTH="${SIZE%x*}"
HEIGHT="${SIZE#*x}"
WAIT_TIMEOUT="${WAIT_TIMEOUT:-120}"
SESSION="blindspot-demo-$$"
PY="$ROOT/.venv/bin/python"
[ -x "$PY" ] || PY="$(command -v python3)"
command -v tmux >/dev/null || { echo "tmux is not installed (apt-get install -y tmux)" >&2; exit 2; }
mkdir -p "$OUT"
: >"$OUT/log.txt"
START=$(date +%s%N)

if [ -n "$NEWUSER" ]; then
    echo "preparing the new user's files in $OUT: resnet18.pth (local weights) and my-images/ (their own photos)"
    "$PY" - "$OUT" <<'PYEOF'
import sys
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

out = Path(sys.argv[1])
torch.manual_seed(0)  # stands for the user's trained weights: the workbench must read them from this file
torch.save(torchvision.models.resnet18(weights=None).state_dict(), out / "resnet18.pth")
rng = np.random.default_rng(0)
for k, name in enumerate(("n01440764", "n01443537")):  # two ImageNet classes, folders named by WordNet id
    folder = out / "my-images" / name
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(20):
        img = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
        img[20 + 30 * k : 60 + 30 * k, 30:90] = (200, 60 * k, 40)
        Image.fromarray(img).save(folder / f"photo{i:02d}.png")
PYEOF
fi

if [ $# -eq 0 ] && [ -z "$MATRIX" ] && [ -z "$NEWUSER" ]; then
    MATRIX="$OUT/matrix"
    if [ ! -f "$MATRIX/matrix.json" ]; then
        echo "computing a small transfer matrix for the demo in $MATRIX ..."
        (cd "$ROOT" && OMP_NUM_THREADS=1 "$PY" -m blindspot transfer --sources softmax1,n100-100-10 \
            --targets softmax1,n100-100-10 --split test --n 32 --noise 0.1 --c-steps 3 --max-iter 30 \
            --device cpu --out "$MATRIX" >"$OUT/transfer.log" 2>&1)
    fi
fi

cleanup() { tmux kill-session -t "$SESSION" 2>/dev/null || true; }
trap cleanup EXIT

capture() { tmux capture-pane -p -t "$SESSION"; }
stamp() { local ds=$(( ($(date +%s%N) - START) / 100000000 )); echo "$((ds / 10)).$((ds % 10))"; }
log() {
    { echo "=== $(stamp) s: $1"; capture; } >>"$OUT/log.txt"
}
wait_for() {
    local text="$1" limit="$2" t0
    t0=$(date +%s)
    until capture | grep -qF -- "$text"; do
        if [ $(( $(date +%s) - t0 )) -ge "$limit" ]; then
            log "TIMEOUT waiting for '$text'"
            echo "timed out after ${limit}s waiting for '$text' (pane in $OUT/log.txt)" >&2
            return 1
        fi
        sleep 0.2
    done
}

start_app() {
    tmux kill-session -t "$SESSION" 2>/dev/null || true
    tmux new-session -d -s "$SESSION" -x "$WIDTH" -y "$HEIGHT" \
        "cd '$OUT' && XDG_CONFIG_HOME='$OUT/config' OMP_NUM_THREADS=2 TERM=xterm-256color '$PY' -m blindspot tui --graphics $GRAPHICS; sleep 2"
    tmux set-option -t "$SESSION" window-size manual >/dev/null 2>&1 || true
    tmux resize-window -t "$SESSION" -x "$WIDTH" -y "$HEIGHT" >/dev/null 2>&1 || true
}
[ -n "$NEWUSER" ] && rm -rf "$OUT/config" "$OUT/runs"  # a new user: no remembered choices, no earlier runs
start_app

if [ $# -eq 0 ] && [ -n "$NEWUSER" ]; then
    set -- wait:"torchvision name" snap:n01-first-start \
        l type:resnet18 Tab type:"$OUT/resnet18.pth" Enter wait:"it is now active" snap:n02-resnet18-loaded \
        i C-u type:"$OUT/my-images" Enter wait:"imagefolder" snap:n03-own-images \
        3 wait:"attack settings" f C-u type:32 Tab Tab C-u type:3 Tab C-u type:8 Escape snap:n04-form \
        s wait:"images 8/32" snap:n05-attacking x wait:"cancelled" snap:n06-cancelled \
        R wait:"resuming" "alive:6:figures" "alive:3:attack settings" wait:"done" snap:n07-resumed-done \
        6 wait:"finished" snap:n08-runs Enter wait:"done" PageDown PageDown snap:n09-reopened-paged \
        2 wait:"verdict" f Enter sleep:0.5 snap:n10-layer-list Up Up Enter wait:"Conv2d" wait:"verdict" snap:n11-gallery-conv \
        q sleep:3 restart \
        wait:"resnet18" wait:"my-images" wait:"weights resnet18.pth" snap:n12-restarted-same-choices q
elif [ $# -eq 0 ]; then
    set -- wait:"torchvision name" wait:"n100-100-10" Up Down Enter wait:"active model: n100-100-10" \
        snap:01-models \
        "alive:3:attack settings" snap:02-attack-ready s sleep:2 snap:03-attack-streaming \
        "alive:1:torchvision name" "alive:3:attack settings" sleep:1 snap:04-attack-streaming \
        wait:"done" snap:05-attack-done Enter sleep:1 snap:06-attack-enlarged Escape \
        2 wait:"verdict" snap:07-gallery n sleep:0.5 Enter sleep:1 snap:08-gallery-enlarged Escape \
        4 l C-u type:"$MATRIX/matrix.json" Enter wait:"opened" snap:09-transfer \
        Down Enter wait:"misclassifies" snap:10-transfer-cell Enter sleep:1 snap:11-transfer-enlarged \
        Escape Escape \
        5 wait:"weight layers" Down sleep:0.5 snap:12-bounds q
fi

for step in "$@"; do
    case "$step" in
        type:*) tmux send-keys -t "$SESSION" -l -- "${step#type:}" ;;
        sleep:*) sleep "${step#sleep:}" ;;
        wait:*) wait_for "${step#wait:}" "$WAIT_TIMEOUT" ;;
        snap:*) capture >"$OUT/${step#snap:}.txt"; log "${step#snap:}"; echo "captured $OUT/${step#snap:}.txt" ;;
        restart) start_app ;;
        alive:*)
            rest="${step#alive:}"
            tmux send-keys -t "$SESSION" -- "${rest%%:*}"
            wait_for "${rest#*:}" 2 || { echo "the UI did not answer '${rest%%:*}' within 2 s" >&2; exit 1; }
            ;;
        *) tmux send-keys -t "$SESSION" -- "$step" ;;
    esac
    sleep 0.3
done
log "end"
echo "done: panes in $OUT (log.txt has every capture with its time)"
