"""Explicit zero (or constant) padding, as every forward of the IR pads: the float ANN
forward, the integer simulator and the tandem model read a node's padding through these,
so that the order of its fields is spelt out once."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def pad2d(x: torch.Tensor, padding: Sequence[int], value: float = 0.0) -> torch.Tensor:
    """``x`` (..., H, W) padded by a node's ``padding`` (top, left, bottom, right) with
    ``value``; ``x`` itself where there is none."""
    top, left, bottom, right = padding
    if not (top or left or bottom or right):
        return x
    return F.pad(x, (left, right, top, bottom), value=value)


def pad_axes(x: torch.Tensor, pads: Sequence[int]) -> torch.Tensor:
    """``x`` (batch, *shape) zero-padded by a pad node's ``pads`` (ONNX order: the start of
    every axis of ``shape``, then the end of every axis)."""
    rank = len(pads) // 2
    spec: list[int] = []
    for axis in reversed(range(rank)):  # F.pad lists the last axis first
        spec += [pads[axis], pads[axis + rank]]
    return F.pad(x, spec)
