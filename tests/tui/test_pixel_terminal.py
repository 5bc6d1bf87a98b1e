"""`blindspot tui` in a real pty that answers like a VT340 with sixel: grids drawn as sixel images.

The pty plays the terminal (tests/tui/terminal.py): it answers DA1 with sixel support and the cell-size
query with 10×20 pixels, and records the app's output, in which each tile is one sixel image placed by a
cursor move. The images are decoded (independently of the encoder) and compared with the source images.
"""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest

from engines.core.data import mnist_files, read_idx
from tests.tui.terminal import CELL, PLAIN_DA1, SIXEL_DA1, Terminal, decode_sixel, sixel_images, tui_argv, tui_env

pytestmark = pytest.mark.slow
TILE_PX = 56  # a 28×28 image at ×2, the smallest a pixel terminal gets


def start(tmp_path, cols: int = 160, rows: int = 48, **terminal) -> Terminal:
    config = tmp_path / "config" / "blindspot"
    config.mkdir(parents=True)
    settings = {"runs_dir": str(tmp_path / "runs"), "device": "cpu", "attack": {"n": 8, "c_steps": 2, "max_iter": 10}}
    (config / "workbench.json").write_text(json.dumps(settings))
    term = Terminal(tui_argv(), cols, rows, tui_env(tmp_path), tmp_path, **terminal)
    term.wait_for(lambda: b"Models" in term.output, 60, "the Models screen")
    return term


def grey(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float64).mean(axis=2) if a.ndim == 3 else a.astype(np.float64)


def corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = grey(a).ravel(), grey(b).ravel()
    return float(np.corrcoef(a, b)[0, 1])


def test_gallery_and_attack_tiles_are_sixel_images_of_56_pixels_or_more(tmp_path):
    term = start(tmp_path)
    try:
        mark = len(term.output)
        term.send("2")
        term.wait_for(lambda: len(sixel_images(bytes(term.output[mark:]))) >= 16, 180, "the gallery's sixel tiles")
        term.pump(1.0)  # the rest of the frame
        images = sixel_images(bytes(term.output[mark:]))
        sizes = {im.size for im in images}
        assert len(images) >= 16 and all(w >= TILE_PX and h >= TILE_PX for w, h in sizes), sizes
        # the first tile is the first scored unit's top image, at ×2 with nearest neighbours
        units = json.loads(next((tmp_path / "runs").glob("units-*/units.json")).read_text())["all"]["units"]
        first = next(r for r, dead in enumerate(units["degenerate"]) if not dead)
        test_images = read_idx(next(p for k, p in mnist_files().items() if "test" in k and "image" in k))
        source = test_images[units["top"][first][0]]
        top_left = min(images, key=lambda im: (im.row, im.col))
        tile = decode_sixel(top_left.data)
        h, w = tile.shape[:2]
        oy, ox = (h - 2 * source.shape[0]) // 2, (w - 2 * source.shape[1]) // 2
        drawn = tile[oy : oy + 2 * source.shape[0], ox : ox + 2 * source.shape[1]]
        assert corr(drawn, np.kron(source, np.ones((2, 2)))) > 0.98
        tops = sorted({im.row for im in images})  # tiles of one grid line share a row; lines are a tile apart
        assert all(b - a >= h // CELL[1] for a, b in zip(tops, tops[1:], strict=False))
        per_line = len({im.col for im in images if im.row == top_left.row and im.col < 80})  # units: first line

        mark = len(term.output)
        term.send("\x1b[B")  # the cursor moves a line down: those two lines are redrawn, not the whole grid
        term.pump(1.5)
        moved = sixel_images(bytes(term.output[mark:]))
        assert len(moved) == 2 * per_line == len({(im.row, im.col) for im in moved}), [(im.row, im.col) for im in moved]
        assert {im.row for im in moved} == set(tops[:2])

        mark = len(term.output)
        term.send("3")
        term.pump(1.0)
        term.send("s")
        term.wait_for(lambda: b"done" in term.output[mark:], 240, "the attack to finish")
        term.pump(1.5)
        examples = sixel_images(bytes(term.output[mark:]))
        assert len(examples) >= 3 and all(w >= TILE_PX and h >= TILE_PX for w, h in {im.size for im in examples})
        diff = decode_sixel(examples[1].data)  # original, difference, adversarial: the difference is in colour
        assert (np.abs(diff[..., 0].astype(int) - diff[..., 2].astype(int)) > 60).any()
    finally:
        term.close()


def test_without_sixel_the_gallery_is_drawn_in_cells(tmp_path):
    term = start(tmp_path, da1=PLAIN_DA1)
    try:
        mark = len(term.output)
        term.send("2")
        term.wait_for(lambda: "▀".encode() in term.output[mark:], 180, "half-block tiles")
        term.pump(1.0)
        assert not sixel_images(bytes(term.output)) and b"\x1bP" not in term.output
    finally:
        term.close()


PROBE = textwrap.dedent(
    """
    import os, select, sys, tty
    from screens import graphics
    mode = graphics.configure("auto")
    print("MODE", mode, graphics.cell_size(), "NOTICE", bool(graphics.notice()), flush=True)
    tty.setcbreak(0)  # keys one by one, as the app reads them
    ready, _, _ = select.select([0], [], [], 3.0)
    print("READ", os.read(0, 100) if ready else b"", flush=True)
    """
)


@pytest.mark.parametrize(
    ("da1", "delay", "mode", "notice"),
    [
        (SIXEL_DA1, 0.0, "sixel", False),
        (PLAIN_DA1, 0.0, "halfblock", False),
        (None, 0.0, "halfblock", True),
        (SIXEL_DA1, 0.8, "halfblock", True),
    ],  # fmt: skip
    ids=["sixel", "no-sixel", "silent", "late"],
)
def test_the_probe_does_not_hang_and_a_late_answer_is_not_read_as_keys(tmp_path, da1, delay, mode, notice):
    """A silent terminal costs at most a second; a late DA1 answer is dropped, never typed into the app."""
    import sys

    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    term = Terminal([sys.executable, str(script)], 80, 24, tui_env(tmp_path), tmp_path, da1=da1, answer_delay=delay)
    try:
        term.wait_for(lambda: b"MODE" in term.output, 10, "the probe's result")
        term.pump(0.3)
        term.send("k")  # the first key after the probe must arrive as it was typed
        term.wait_for(lambda: b"READ" in term.output, 10, "what the script reads")
        term.pump(0.2)
    finally:
        term.close()
    out = bytes(term.output)
    assert f"MODE {mode}".encode() in out and f"NOTICE {notice}".encode() in out, out[-300:]
    if mode == "sixel":
        assert b"MODE sixel (10, 20)" in out  # the cell size from the terminal's answer
    assert b"READ b'k'" in out, out[-300:]
