"""How a converted layer's scale ``lam`` (hence its threshold) is chosen from activations.

A spike count over T steps stands for ``lam * count / T`` with count in 0..T: ``lam`` trades
range (activations above it are clipped) against resolution (steps of ``lam / T``). The
authors' rule takes a high percentile (99.9) of the activations whatever T is. At small T
the steps are coarse, and a lower ``lam`` that clips a few outliers but halves the rounding
error of every other activation can represent the layer better: rule ``mse`` picks, per
layer (or per channel), the ``lam`` that minimises the mean squared error between the
activations and their count values, among fractions of the percentile scale.
"""

from __future__ import annotations

import numpy as np

from ..errors import UsageError

SCALE_RULES = ("percentile", "mse")
# candidate scales for rule mse, as fractions of the percentile scale
FRACTIONS = np.linspace(0.3, 1.0, 36)


def count_error(a: np.ndarray, lam: np.ndarray, T: int) -> np.ndarray:
    """Per row of ``a`` (rows, values), the mean squared error of representing each value by
    ``lam * clip(round(a * T / lam), 0, T) / T`` (counts round: the membrane starts at half
    the threshold)."""
    lam = np.asarray(lam, np.float64).reshape(-1, 1)
    q = np.clip(np.round(a * T / lam), 0, T) * lam / T
    return ((a - q) ** 2).mean(axis=1)


def choose_scales(a: np.ndarray, T: int, percentile: float, rule: str = "percentile") -> np.ndarray:
    """Per row of the activations ``a`` (rows, values), the scale ``lam`` by ``rule``;
    rows with no positive activation get 0 (the caller keeps their old scale)."""
    if rule not in SCALE_RULES:
        raise UsageError(f"unknown scale rule '{rule}'", f"use one of {', '.join(SCALE_RULES)}")
    top = np.percentile(a, percentile, axis=1)
    if rule == "percentile":
        return top
    errs = np.stack([count_error(a, np.where(top > 0, top * f, 1.0), T) for f in FRACTIONS])
    best = FRACTIONS[np.argmin(errs, axis=0)]
    return np.where(top > 0, top * best, top)
