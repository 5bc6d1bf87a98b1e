"""Choice lists declared once: the CLI's options and the TUI's selects both read them."""

from __future__ import annotations

DEVICES = ("auto", "cpu", "cuda")
SPLITS = ("test", "train", "p1", "p2")
TARGETS = ("random", "next", "least-likely", "all")  # or a class label
DISTANCES = ("l2sq", "l2")
OPTIMIZERS = ("recipe", "lbfgs", "adam")
GRAPHICS_MODES = ("auto", "sixel", "tgp", "halfblock", "unicode")
