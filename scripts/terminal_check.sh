#!/usr/bin/env bash
# The workbench's images checked in a real terminal: xterm started as a VT340 (sixel, 256 colour registers)
# under a virtual X display; `blindspot tui` run in it for sixel (found by the app's own probe) and for
# half-blocks; Gallery and Attack driven with key presses (xdotool); screenshots (ImageMagick `import`)
# compared with the run folders' images (correlation >= 0.9 at every tile checked).
#
# Install the tools (Debian/Ubuntu, as root):
#   apt-get update && apt-get install -y xterm xvfb imagemagick xdotool x11-utils fonts-dejavu-core
#
# Usage: scripts/terminal_check.sh [--out DIR] [--modes sixel,halfblock]
# Screenshots go to docs/screenshots/terminal/ by default (the README shows them).
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in xterm Xvfb import xdotool; do
  command -v "$tool" >/dev/null || { echo "missing $tool: see the install line at the top of $0" >&2; exit 2; }
done
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
exec "$PY" scripts/terminal_check.py "$@"
