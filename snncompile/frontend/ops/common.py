"""Helpers shared by the op converters: attribute reading and spatial padding."""

from __future__ import annotations

import math

import numpy as np
import onnx

from ..context import ImportContext, node_error


def f32(a) -> np.ndarray:
    """A float32 copy of a constant (weights are float32 in the IR)."""
    return np.array(a, dtype=np.float32)


def pair(node: onnx.NodeProto, attrs: dict, key: str, default: int) -> tuple[int, int]:
    """A 2-element spatial attribute (kernel_shape, strides, dilations)."""
    v = attrs.get(key, [default, default])
    if len(v) != 2:
        raise node_error(node, f"attribute {key}={list(v)} is not 2-D; only 2-D (H, W) layers are "
                               "supported", "use Conv2d/Pool2d layers")
    if min(v) < 1:
        raise node_error(node, f"attribute {key}={list(v)} is impossible: every entry must be at "
                               "least 1", BROKEN_ATTRIBUTE_HINT)
    return int(v[0]), int(v[1])


BROKEN_ATTRIBUTE_HINT = ("the model file is damaged or was edited by hand: re-export it from the "
                         "framework it was trained in")


def image_input(ctx: ImportContext, node: onnx.NodeProto) -> tuple[str, tuple[int, int, int]]:
    """The activation input of a 2-D layer and its (C, H, W) shape."""
    x = ctx.act(node, 0)
    s = ctx.shape(x)
    if len(s) != 3:
        raise node_error(node, f"needs an image input (N, C, H, W), got per-sample shape {s}",
                         "only 2-D convolution and pooling are supported")
    return x, s  # type: ignore[return-value]


def spatial_pads(node: onnx.NodeProto, attrs: dict, hw: tuple[int, int], kernel: tuple[int, int],
                 strides: tuple[int, int], dilations: tuple[int, int] = (1, 1)
                 ) -> tuple[int, int, int, int]:
    """Explicit (top, left, bottom, right) padding from ``pads`` or ``auto_pad``."""
    auto = attrs.get("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        pads = [int(p) for p in attrs.get("pads", [0, 0, 0, 0])]
        if len(pads) != 4:
            raise node_error(node, f"pads={pads} is not 2-D padding")
        if min(pads) < 0:
            raise node_error(node, f"negative pads {pads} are not supported",
                             "crop with a Slice before the layer instead, and re-export")
        return pads[0], pads[1], pads[2], pads[3]
    if auto == "VALID":
        return 0, 0, 0, 0
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        raise node_error(node, f"auto_pad={auto!r} is not a known padding mode")
    begin, end = [], []
    for n, k, s, d in zip(hw, kernel, strides, dilations):
        total = max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
        small, big = total // 2, total - total // 2
        begin.append(small if auto == "SAME_UPPER" else big)
        end.append(big if auto == "SAME_UPPER" else small)
    return begin[0], begin[1], end[0], end[1]


def check_ceil_mode(node: onnx.NodeProto, attrs: dict, hw: tuple[int, int], kernel: tuple[int, int],
                    strides: tuple[int, int], pads: tuple[int, int, int, int],
                    pad_end: bool = False) -> tuple[int, int, int, int]:
    """The padding that gives ceil_mode=1's output size with floor rounding.

    Where ceil and floor agree, ``pads`` unchanged. Where ceil adds a partial window at the
    border: with ``pad_end`` (max pooling, whose padding never wins a maximum) that window is
    the same as one over more end padding, so the bottom/right pads grow; otherwise (an average
    would divide that window by fewer elements) a ModelError."""
    if not attrs.get("ceil_mode", 0):
        return pads
    extra = []
    for n, k, s, b, e in zip(hw, kernel, strides, pads[:2], pads[2:]):
        floor_len = (n + b + e - k) // s + 1
        ceil_len = -(-(n + b + e - k) // s) + 1
        if (ceil_len - 1) * s >= n + b:  # a last window starting in the end padding is dropped
            ceil_len -= 1
        extra.append((ceil_len - 1) * s + k - (n + b + e) if ceil_len != floor_len else 0)
    if any(extra) and not pad_end:
        raise node_error(node, "ceil_mode=1 changes the output size here (a partial window at "
                               "the border, averaged over fewer elements), which has no "
                               "fixed-kernel equivalent",
                         "export with ceil_mode=False, or pad the input so the windows tile it")
    return pads[0], pads[1], pads[2] + extra[0], pads[3] + extra[1]
