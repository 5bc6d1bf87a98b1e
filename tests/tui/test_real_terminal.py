"""The real-terminal check (scripts/terminal_check.py): xterm as a VT340 under Xvfb, screenshots vs data.

Skipped where xterm, Xvfb, ImageMagick's import or xdotool are missing (scripts/terminal_check.sh says
how to install them). Screenshots go to tmp_path, never into the repository."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ("xterm", "Xvfb", "import", "xdotool", "xwininfo")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(any(shutil.which(t) is None for t in TOOLS), reason="needs xterm, Xvfb, import, xdotool"),
]


def test_sixel_and_half_block_tiles_match_the_images_in_xterm(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "terminal_check.py"), "--out", str(tmp_path), "--display", "61"],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for name in ("gallery-sixel", "attack-sixel", "gallery-halfblock", "attack-halfblock"):
        assert (tmp_path / f"{name}.png").is_file()
    assert "all tiles match" in done.stdout
