"""The numbers printed in Szegedy et al. (2013), Tables 1–5, for side-by-side reports."""

from __future__ import annotations

TABLE1_MODELS = ["softmax1", "softmax2", "softmax3", "n100-100-10", "n200-200-10", "ae400-10"]
TABLE3_MODELS = ["m1", "m1-prime", "m2"]

# Table 1: training error, test error (%), average minimum distortion
TABLE1: dict[str, tuple[float, float, float]] = {
    "softmax1": (6.7, 7.4, 0.062),
    "softmax2": (10.0, 9.4, 0.1),
    "softmax3": (21.2, 20.0, 0.14),
    "n100-100-10": (0.0, 1.64, 0.058),
    "n200-200-10": (0.0, 1.54, 0.065),
    "ae400-10": (0.57, 1.9, 0.086),
}

# Table 2: rows = adversarial source (or noise), columns = TABLE1_MODELS, errors in %
TABLE2: dict[str, list[float]] = {
    "softmax1": [100, 11.7, 22.7, 2, 3.9, 2.7],
    "softmax2": [87.1, 100, 35.2, 35.9, 27.3, 9.8],
    "softmax3": [71.9, 76.2, 100, 48.1, 47, 34.4],
    "n100-100-10": [28.9, 13.7, 21.1, 100, 6.6, 2],
    "n200-200-10": [38.2, 14, 23.8, 20.3, 100, 2.7],
    "ae400-10": [23.4, 16, 24.8, 9.4, 6.6, 100],
    "noise 0.1": [5.0, 10.1, 18.3, 0, 0, 0.8],
    "noise 0.3": [15.6, 11.3, 22.7, 5, 4.3, 3.1],
}

# Table 3: error on P1, P2, test (%), min average distortion
TABLE3: dict[str, tuple[float, float, float, float]] = {
    "m1": (0.0, 2.4, 2.0, 0.062),
    "m1-prime": (0.0, 2.5, 2.1, 0.059),
    "m2": (2.3, 0.0, 2.1, 0.058),
}

# Table 4: rows as printed, columns = TABLE3_MODELS
TABLE4: dict[str, list[float]] = {
    "m1": [100, 26.2, 5.9],
    "m1-prime": [6.25, 100, 5.1],
    "m2": [8.2, 8.2, 100],
    "noise 0.06": [2.2, 2.6, 2.4],
    "m1 amplified 0.1": [100, 98, 43],
    "m1-prime amplified 0.1": [96, 100, 22],
    "m2 amplified 0.1": [27, 50, 100],
    "noise 0.1": [2.6, 2.8, 2.7],
}

# Table 5 (AlexNet frame bounds) lives beside the engine that reproduces it: engines.bounds.network.PAPER_TABLE5
