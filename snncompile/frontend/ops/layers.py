"""Converters of weighted layers and activations: Conv, Gemm, MatMul, BatchNormalization,
Relu, Clip."""

from __future__ import annotations

import numpy as np
import onnx

from ... import ir
from ..context import ImportContext, attributes, node_error
from ..registry import register
from .common import BROKEN_ATTRIBUTE_HINT, image_input, pair, spatial_pads


@register("Conv")
def conv(ctx: ImportContext, node: onnx.NodeProto) -> None:
    """2-D convolution with groups, strides, dilations and (auto_)padding -> Conv2dNode."""
    a = attributes(node)
    w = ctx.weight(node, 1, "weight")
    if w.ndim != 4:
        raise node_error(node, f"only 2-D convolution is supported (weight has shape {w.shape})",
                         "use Conv2d layers on (N, C, H, W) inputs")
    x, s = image_input(ctx, node)
    kernel = tuple(w.shape[2:])
    if tuple(a.get("kernel_shape", kernel)) != kernel:
        raise node_error(node, f"kernel_shape {a['kernel_shape']} does not match weight {w.shape}",
                         BROKEN_ATTRIBUTE_HINT)
    strides, dilations = pair(node, a, "strides", 1), pair(node, a, "dilations", 1)
    groups = int(a.get("group", 1))
    if groups < 1 or s[0] % groups or w.shape[0] % groups or s[0] != w.shape[1] * groups:
        raise node_error(node, f"group={groups} does not fit {s[0]} input channels and a weight "
                               f"of shape {w.shape} (input channels = weight.shape[1] x group, "
                               "output channels divisible by group)", BROKEN_ATTRIBUTE_HINT)
    pads = spatial_pads(node, a, s[1:], kernel, strides, dilations)
    cout = w.shape[0]
    bias = ctx.weight(node, 2, "bias").reshape(-1) if ctx.has_input(node, 2) else np.zeros(cout, np.float32)
    ctx.add(ir.Conv2dNode(name=node.output[0], inputs=[x], weight=w, bias=bias, stride=strides,
                          padding=pads, dilation=dilations, groups=groups))


@register("Gemm")
def gemm(ctx: ImportContext, node: onnx.NodeProto) -> None:
    """Y = alpha * A B' + beta * C with A the activation -> DenseNode, weight (out, in)."""
    a = attributes(node)
    x = ctx.act(node, 0)
    if a.get("transA", 0):
        raise node_error(node, "transA=1 transposes the batch into the features",
                         "export the linear layer as x @ W.T (torch.nn.Linear does this)")
    b = ctx.weight(node, 1, "weight B")
    if b.ndim != 2:
        raise node_error(node, f"weight B has shape {b.shape}, expected a matrix")
    w = (b.T if not a.get("transB", 0) else b) * np.float32(a.get("alpha", 1.0))
    out = w.shape[0]
    bias = np.zeros(out, np.float32)
    if ctx.has_input(node, 2):
        bias = _vector(node, ctx.weight(node, 2, "bias C") * np.float32(a.get("beta", 1.0)), out, "bias C")
    ctx.add(ir.DenseNode(name=node.output[0], inputs=[x], weight=np.ascontiguousarray(w), bias=bias))


@register("MatMul")
def matmul(ctx: ImportContext, node: onnx.NodeProto) -> None:
    """x @ W with a constant matrix W -> DenseNode with zero bias (a following Add of a
    constant becomes an AffineNode that the fold passes merge into this bias)."""
    x = ctx.act(node, 0)
    if len(ctx.shape(x)) != 1:
        raise node_error(node, f"MatMul of a per-sample shape {ctx.shape(x)} (batched matmul) is "
                               "not supported", "flatten the input first")
    w = ctx.weight(node, 1, "weight")
    if w.ndim != 2:
        raise node_error(node, f"weight has shape {w.shape}, expected a matrix")
    ctx.add(ir.DenseNode(name=node.output[0], inputs=[x], weight=np.ascontiguousarray(w.T),
                         bias=np.zeros(w.shape[1], np.float32)))


@register("BatchNormalization")
def batchnorm(ctx: ImportContext, node: onnx.NodeProto) -> None:
    """Inference-mode BatchNorm -> per-channel AffineNode (folded into a conv/dense later)."""
    a = attributes(node)
    if a.get("training_mode", 0):
        raise node_error(node, "BatchNorm in training mode", "export the model in eval() mode")
    if not a.get("spatial", 1):
        raise node_error(node, "BatchNorm with spatial=0 (per-element statistics) is not supported")
    if any(o and o in ctx.used for o in node.output[1:]):
        raise node_error(node, "the running-statistics outputs of BatchNorm are used",
                         "export the model in eval() mode")
    x = ctx.act(node, 0)
    scale, beta, mean, var = (ctx.weight(node, i, what).reshape(-1)
                               for i, what in enumerate(("scale", "bias", "mean", "var"), 1))
    denom = var.astype(np.float64) + a.get("epsilon", 1e-5)
    if np.any(denom <= 0):
        raise node_error(node, f"variance '{node.input[4]}' plus epsilon is not positive "
                               f"(smallest {denom.min():.4g}): a variance cannot be negative",
                         "the model's BatchNorm statistics are broken: retrain or recompute them "
                         "(model.train() over data, then eval()) and re-export")
    a_ = (scale / np.sqrt(denom)).astype(np.float32)
    b_ = (beta - mean * a_).astype(np.float32)
    ctx.add(ir.AffineNode(name=node.output[0], inputs=[x], weight=a_, bias=b_))


@register("Relu")
def relu(ctx: ImportContext, node: onnx.NodeProto) -> None:
    """ReLU -> ReluNode; calibration reads the Relu's own output tensor."""
    ctx.add(ir.ReluNode(name=node.output[0], inputs=[ctx.act(node)], calib_tensor=node.output[0]))


@register("Clip")
def clip(ctx: ImportContext, node: onnx.NodeProto) -> None:
    """Clip(0, m) (ReLU6 and other clipped ReLUs) -> ReluNode(max_value=m)."""
    a = attributes(node)
    x = ctx.act(node)
    if ctx.opset < 11:
        lo, hi = a.get("min", None), a.get("max", None)
    else:
        lo = _scalar(node, ctx.const(node, 1), "min") if ctx.has_input(node, 1) else None
        hi = _scalar(node, ctx.const(node, 2), "max") if ctx.has_input(node, 2) else None
    if lo is None or float(lo) != 0.0:
        raise node_error(node, f"Clip with min={lo} is not a (clipped) ReLU; only min=0 maps onto "
                               "spiking neurons", "use ReLU or ReLU6 / Clip(min=0, max=m)")
    if hi is not None and not np.isfinite(hi):
        hi = None
    if hi is not None and hi <= 0:
        raise node_error(node, f"Clip with max={hi} <= 0 has no positive range")
    ctx.add(ir.ReluNode(name=node.output[0], inputs=[x], calib_tensor=node.output[0],
                        max_value=None if hi is None else float(hi)))


def _scalar(node: onnx.NodeProto, v, what: str) -> float:
    v = np.asarray(v)
    if v.size != 1:
        raise node_error(node, f"{what} must be a scalar, got shape {v.shape}")
    return float(v.reshape(()))


def _vector(node: onnx.NodeProto, v: np.ndarray, n: int, what: str) -> np.ndarray:
    """A bias broadcast to (n,); a per-sample (batch-dependent) bias is refused."""
    if v.ndim > 2 or (v.ndim == 2 and v.shape[0] != 1) or v.size not in (1, n):
        raise node_error(node, f"{what} of shape {v.shape} does not broadcast to ({n},) per sample")
    return np.ascontiguousarray(np.broadcast_to(v.reshape(-1), (n,)), dtype=np.float32)
