"""Which renderer draws images, chosen once before the app starts, and the terminal's cell size in pixels.

The terminal is asked once, before Textual owns it (afterwards Textual's input thread would read the
answers as keys): one write holds the kitty graphics query, the cell-size query (CSI 16 t) and DA1
(CSI c). Every terminal answers DA1 and answers in order, so DA1's answer ends the wait; a terminal
that says nothing within `PROBE_TIMEOUT_S` gets half-blocks and one notice, and its answer, should it
come late, is read and dropped here (up to `DRAIN_S`) instead of reaching the app as keystrokes.
textual-image is imported with its own probes switched off: we tell it the cell size we found.
Grids and the enlarged image use sixel or the kitty protocol (tgp) when the terminal has them,
half-block cells (or unicode shades) otherwise.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shutil
import subprocess
import sys
import time
from typing import Any

from engines.core.choices import GRAPHICS_MODES as GRAPHICS

PROBE_TIMEOUT_S = 0.5  # a terminal that has not answered DA1 by then gets half-blocks
DRAIN_S = 1.0  # how long a late answer is still read (and dropped) before the app starts
DEFAULT_CELL = (10, 20)  # a VT340's cell in pixels, when the terminal does not say
KITTY_QUERY = "\x1b_Gi=31,s=1,v=1,a=q,t=d,f=24;AAAA\x1b\\"
CELL_QUERY = "\x1b[16t"
DA1_QUERY = "\x1b[c"
DA1_ANSWER = re.compile(r"\x1b\[\?([\d;]*)c")
CELL_ANSWER = re.compile(r"\x1b\[6;(\d+);(\d+)t")
KITTY_ANSWER = re.compile(r"\x1b_Gi=31;([^\x1b]*)\x1b\\")

_state: dict[str, Any] = {
    "mode": "halfblock",
    "resolved": "halfblock",
    "configured": False,
    "notice": "",
    "cell": DEFAULT_CELL,
}
TMUX_HINT = (
    "inside tmux without image passthrough: images use half-block cells "
    "(for sixel or kitty images, `set -g allow-passthrough on` in tmux; sixel also needs a tmux built with sixel)"
)
SILENT_HINT = (
    "the terminal did not answer its graphics query within {:g} s: images use half-block cells "
    "(--graphics sixel or tgp forces pixels)"
)


def _tmux(*args: str) -> str | None:
    """Output of a tmux command for the session we run in (None when tmux does not answer)."""
    exe = shutil.which("tmux")
    if exe is None:
        return None
    try:
        done = subprocess.run([exe, *args], capture_output=True, text=True, timeout=2, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def tmux_passes(renderer: str) -> bool:
    """Whether the tmux we run inside lets `renderer` (sixel or tgp) reach the terminal."""
    if (_tmux("show", "-gv", "allow-passthrough") or "off") in ("on", "all"):
        return True
    return renderer == "sixel" and "sixel" in (_tmux("display", "-p", "#{client_termfeatures}") or "")


# ------------------------------------------------------------------------------------------ probing
class Answers:
    """What the terminal said: DA1's attributes (None: no answer in time), kitty, the cell size."""

    def __init__(self, text: str) -> None:
        da1 = DA1_ANSWER.search(text)
        self.attributes: list[str] | None = da1.group(1).split(";") if da1 else None
        kitty = KITTY_ANSWER.search(text)
        self.kitty = bool(kitty and kitty.group(1) == "OK")
        cell = CELL_ANSWER.search(text)
        self.cell = (int(cell.group(2)), int(cell.group(1))) if cell and int(cell.group(1)) > 0 else None

    @property
    def answered(self) -> bool:
        return self.attributes is not None

    @property
    def sixel(self) -> bool:
        return "4" in (self.attributes or [])


def _tty_fds() -> tuple[int, int] | None:
    """(stdin, stdout) descriptors when both are a terminal."""
    try:
        fin, fout = sys.__stdin__.fileno(), sys.__stdout__.fileno()  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):
        return None
    return (fin, fout) if os.isatty(fin) and os.isatty(fout) else None


def ioctl_cell_size(fd: int) -> tuple[int, int] | None:
    """Cell size in pixels from the terminal's window size (xterm, kitty, … fill in the pixel fields)."""
    try:
        import fcntl
        import struct
        import termios

        rows, cols, xpix, ypix = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    except (ImportError, OSError):
        return None
    if rows and cols and xpix and ypix:
        return xpix // cols, ypix // rows
    return None


def probe(timeout: float = PROBE_TIMEOUT_S, drain: float = DRAIN_S, kitty: bool = True) -> Answers:
    """Ask the terminal (kitty query, cell size, DA1) and read until DA1's answer or the timeout.

    Without an answer in `timeout`, input is still read and dropped until `drain` seconds have passed
    or DA1's answer came, so that a slow terminal's answer is never taken for keys; keys typed during
    the probe are dropped too (the probe takes milliseconds in a terminal that answers)."""
    fds = _tty_fds()
    if fds is None:
        return Answers("")
    fin, fout = fds
    import termios
    import tty

    saved = termios.tcgetattr(fin)
    text = ""
    try:
        tty.setcbreak(fin, termios.TCSANOW)
        attrs = termios.tcgetattr(fin)
        attrs[3] &= ~termios.ECHO  # an answer must not be echoed on the screen
        termios.tcsetattr(fin, termios.TCSANOW, attrs)
        os.write(fout, ((KITTY_QUERY if kitty else "") + CELL_QUERY + DA1_QUERY).encode())
        start = time.monotonic()
        while DA1_ANSWER.search(text) is None:
            left = start + drain - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select([fin], [], [], left)
            if not ready:
                break
            chunk = os.read(fin, 4096)
            if not chunk:
                break
            text += chunk.decode("latin-1")
            if time.monotonic() - start > timeout and DA1_ANSWER.search(text):
                text = text[: DA1_ANSWER.search(text).start()]  # type: ignore[union-attr]  # late: not believed
                break
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError, termios.error):
            termios.tcflush(fin, termios.TCIFLUSH)
            termios.tcsetattr(fin, termios.TCSANOW, saved)
    return Answers(text)


def _import_textual_image(cell: tuple[int, int]) -> None:
    """Import textual-image without its own terminal probes (they read stdin with no way to bound it)."""
    import textual_image._terminal as terminal
    from textual_image._terminal import CellSize

    terminal.get_cell_size._result = CellSize(*cell)  # type: ignore[attr-defined]
    if "textual_image.renderable" in sys.modules:
        import textual_image.widget  # noqa: F401

        return
    real = sys.__stdout__

    class _NoTty:  # textual-image probes at import time when stdout is a terminal
        def isatty(self) -> bool:
            return False

        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

    sys.__stdout__ = _NoTty()  # type: ignore[misc,assignment]
    try:
        import textual_image.renderable  # noqa: F401
        import textual_image.widget  # noqa: F401
    finally:
        sys.__stdout__ = real  # type: ignore[misc]


def configure(mode: str = "auto", answers: Answers | None = None) -> str:
    """Ask the terminal (only when needed) and remember the renderer; returns what `auto` chose.

    `answers`: what the terminal said, when already asked (tests pass their own)."""
    mode = (mode or "auto").lower()
    if mode not in GRAPHICS:
        from engines.core.errors import InputError

        raise InputError(f"unknown --graphics {mode!r}: use {', '.join(GRAPHICS)}")
    notice, cell = "", DEFAULT_CELL
    fds = _tty_fds()
    if mode in ("auto", "sixel", "tgp"):
        from_ioctl = ioctl_cell_size(fds[1]) if fds else None
        if answers is None and fds is not None and (mode == "auto" or from_ioctl is None):
            answers = probe(kitty=mode == "auto")
        cell = from_ioctl or (answers.cell if answers and answers.cell else DEFAULT_CELL)
    resolved = mode
    if mode == "auto":
        resolved = "halfblock"
        if answers is not None and answers.answered:
            resolved = "sixel" if answers.sixel else "tgp" if answers.kitty else "halfblock"
        elif answers is not None:
            notice = SILENT_HINT.format(PROBE_TIMEOUT_S)
    if resolved in ("sixel", "tgp") and os.environ.get("TMUX") and not tmux_passes(resolved):
        resolved, notice = "halfblock", TMUX_HINT  # drawn blank with stray characters otherwise
    _import_textual_image(cell)
    _state.update(mode=mode, resolved=resolved, configured=True, notice=notice, cell=cell)
    return resolved


def notice() -> str:
    """Why the renderer differs from the one asked for (empty when it does not)."""
    return str(_state["notice"])


def configured() -> bool:
    """Whether `configure` ran (textual-image imported, terminal asked)."""
    return bool(_state["configured"])


def mode() -> str:
    """The renderer images use: sixel, tgp, halfblock or unicode."""
    return str(_state["resolved"])


def pixels() -> bool:
    """Whether images are drawn in pixels (sixel, kitty) rather than in character cells."""
    return mode() in ("sixel", "tgp")


def cell_size() -> tuple[int, int]:
    """(width, height) of one terminal cell in pixels (the terminal's answer, else a VT340's 10×20)."""
    cell = _state["cell"]
    return int(cell[0]), int(cell[1])


def grid_renderable() -> type:
    """Rich renderable class for image grids drawn in cells: half-blocks, or unicode shades in unicode mode."""
    if mode() == "unicode":
        from textual_image.renderable.unicode import Image as Unicode

        return Unicode
    from textual_image.renderable.halfcell import Image as Halfcell

    return Halfcell


_SIXEL_WIDGET: list[type] = []


def sixel_image_widget() -> type:
    """textual-image's sixel widget, encoding with the grids' fixed palette (`screens.pictures.sixel`).

    VT340-style terminals (xterm) share colour registers between images; textual-image numbers each
    image's colours from 0, so an image drawn after another recoloured it. Falls back to textual-image's
    own widget if its internals differ from 0.12's."""
    if _SIXEL_WIDGET:
        return _SIXEL_WIDGET[0]
    import textual_image.widget.sixel as module

    impl = getattr(module, "_ImageSixelImpl", None)
    if impl is None or not hasattr(impl, "_image_to_sixels"):
        _SIXEL_WIDGET.append(module.Image)
        return module.Image

    class _FixedPaletteImpl(impl):  # type: ignore[valid-type,misc]
        def _image_to_sixels(self, image: Any, sixel_options: Any = None, background: Any = None) -> str:
            from screens.pictures import sixel

            return sixel(image)

    renderable = getattr(module.Image, "_Renderable", None)

    class FixedPaletteSixelImage(module.Image, Renderable=renderable):
        def compose(self) -> Any:
            yield _FixedPaletteImpl(self.image, self._sixel_options)

    _SIXEL_WIDGET.append(FixedPaletteSixelImage)
    return FixedPaletteSixelImage


def large_image_widget() -> type:
    """Textual widget class for one enlarged image in the configured mode (half-block if unavailable)."""
    import textual_image.widget as widgets

    if mode() == "sixel":
        return sixel_image_widget()

    wanted = {
        "sixel": ("SixelImage",),
        "tgp": ("TGPImage", "KittyImage"),
        "unicode": ("UnicodeImage",),
        "halfblock": ("HalfcellImage",),
    }[mode()]
    for name in wanted:
        cls = getattr(widgets, name, None)
        if cls is not None:
            return cls
    return widgets.HalfcellImage
