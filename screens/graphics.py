"""Which textual-image renderer draws images, chosen once before the app starts.

textual-image asks the terminal what it supports when `textual_image.renderable` is first imported,
and that query no longer works once Textual owns the terminal, so `configure` must run before
`App.run()`. Grids always use cheap half-block cells (or unicode shades when asked for); only the
single enlarged image uses sixel / TGP when the terminal has them. Names are looked up defensively
so that textual-image 0.12 and 0.14 both work.
"""

from __future__ import annotations

from typing import Any

from engines.core.choices import GRAPHICS_MODES as GRAPHICS

_state: dict[str, Any] = {"mode": "halfblock", "resolved": "halfblock", "configured": False}


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
    _state.update(mode=mode, resolved=resolved, configured=True)
    return resolved


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
