"""Which textual-image renderer draws images, chosen once before the app starts.

textual-image asks the terminal what it supports when `textual_image.renderable` is first imported,
and that query no longer works once Textual owns the terminal, so `configure` must run before
`App.run()`. Grids always use cheap half-block cells (or unicode shades when asked for); only the
single enlarged image uses sixel / TGP when the terminal has them. Names are looked up defensively
so that textual-image 0.12 and 0.14 both work.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

from engines.core.choices import GRAPHICS_MODES as GRAPHICS

_state: dict[str, Any] = {"mode": "halfblock", "resolved": "halfblock", "configured": False, "notice": ""}
TMUX_HINT = (
    "inside tmux without image passthrough: the enlarged image uses half-block cells "
    "(for sixel or kitty images, `set -g allow-passthrough on` in tmux; sixel also needs a tmux built with sixel)"
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


def configure(mode: str = "auto") -> str:
    """Import textual-image (runs its terminal detection) and remember the mode; returns what `auto` chose."""
    mode = (mode or "auto").lower()
    if mode not in GRAPHICS:
        from engines.core.errors import InputError

        raise InputError(f"unknown --graphics {mode!r}: use {', '.join(GRAPHICS)}")
    import textual_image.renderable as renderable
    import textual_image.widget  # noqa: F401  (fills the cell-size cache while the terminal can still answer)

    resolved = mode
    if mode == "auto":
        auto = getattr(renderable, "Image", None)
        resolved = "halfblock"
        for name, attr in (("sixel", "SixelImage"), ("tgp", "TGPImage"), ("unicode", "UnicodeImage")):
            if auto is not None and auto is getattr(renderable, attr, object()):
                resolved = name
        if auto is not None and "kitty" in getattr(auto, "__module__", ""):
            resolved = "tgp"
    notice = ""
    if resolved in ("sixel", "tgp") and os.environ.get("TMUX") and not tmux_passes(resolved):
        resolved, notice = "halfblock", TMUX_HINT  # drawn blank with stray characters otherwise
    _state.update(mode=mode, resolved=resolved, configured=True, notice=notice)
    return resolved


def notice() -> str:
    """Why the renderer differs from the one asked for (empty when it does not)."""
    return str(_state["notice"])


def configured() -> bool:
    """Whether `configure` ran (textual-image imported, terminal asked)."""
    return bool(_state["configured"])


def mode() -> str:
    """The renderer the enlarged image uses: sixel, tgp, halfblock or unicode."""
    return str(_state["resolved"])


def grid_renderable() -> type:
    """Rich renderable class for image grids: half-block cells, or unicode shades in unicode mode."""
    if mode() == "unicode":
        from textual_image.renderable.unicode import Image as Unicode

        return Unicode
    from textual_image.renderable.halfcell import Image as Halfcell

    return Halfcell


def large_image_widget() -> type:
    """Textual widget class for one enlarged image in the configured mode (half-block if unavailable)."""
    import textual_image.widget as widgets

    wanted = {
        "sixel": ("SixelImage",),
        "tgp": ("TGPImage", "KittyImage"),
        "unicode": ("UnicodeImage",),
        "halfblock": ("HalfcellImage",),
    }[mode()]
    if _state["mode"] == "auto" and mode() != "halfblock":
        wanted = ("Image", *wanted)
    for name in wanted:
        cls = getattr(widgets, name, None)
        if cls is not None:
            return cls
    return widgets.HalfcellImage
