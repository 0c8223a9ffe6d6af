"""Converters of pooling: AveragePool, GlobalAveragePool, ReduceMean(H, W), MaxPool,
GlobalMaxPool.

Average pooling maps exactly onto a sum pool with the 1/k^2 in the scale; the IR node counts
zero padding in the divisor (count_include_pad=1), so an average that excludes padding is
refused, and so is an average whose ceil_mode adds a partial window. Max pooling is converted
to spike-count max pooling (ceil_mode as more end padding, which never wins a maximum), with a
warning naming the layer and the target that cannot carry it (nir).
"""

from __future__ import annotations

import numpy as np
import onnx

from ... import ir
from ..context import ImportContext, attributes, node_error
from ..registry import register
from .common import check_ceil_mode, image_input, pair, spatial_pads


def _window(ctx: ImportContext, node: onnx.NodeProto, a: dict):
    """Input, kernel, strides and padding; a MaxPool's ceil_mode becomes more end padding."""
    x, s = image_input(ctx, node)
    if "kernel_shape" not in a:
        raise node_error(node, "has no kernel_shape")
    kernel = pair(node, a, "kernel_shape", 1)
    strides = pair(node, a, "strides", 1)
    if pair(node, a, "dilations", 1) != (1, 1):
        raise node_error(node, "dilated pooling is not supported", "use dilations=1")
    pads = spatial_pads(node, a, s[1:], kernel, strides)
    pads = check_ceil_mode(node, a, s[1:], kernel, strides, pads,
                           pad_end=node.op_type == "MaxPool")
    return x, kernel, strides, pads


@register("AveragePool")
def average_pool(ctx: ImportContext, node: onnx.NodeProto) -> None:
    a = attributes(node)
    x, kernel, strides, pads = _window(ctx, node, a)
    if any(pads) and not a.get("count_include_pad", 0):
        raise node_error(node, f"average pooling with padding {pads} and count_include_pad=0 "
                               "divides border windows by fewer elements, which a fixed sum pool "
                               "cannot do",
                         "use count_include_pad=True (torch: AvgPool2d(..., count_include_pad="
                         "True)) or pool without padding"
                         + ("; exporters before opset 10 write ceil_mode=True this way: export "
                            "with ceil_mode=False" if ctx.opset < 10 and not any(pads[:2]) else ""))
    ctx.add(ir.AvgPool2dNode(name=node.output[0], inputs=[x], kernel=kernel, stride=strides,
                             padding=pads))


@register("GlobalAveragePool")
def global_average_pool(ctx: ImportContext, node: onnx.NodeProto) -> None:
    x, s = image_input(ctx, node)
    ctx.add(ir.AvgPool2dNode(name=node.output[0], inputs=[x], kernel=s[1:], stride=s[1:]))


@register("ReduceMean")
def reduce_mean(ctx: ImportContext, node: onnx.NodeProto) -> None:
    """Mean over H and W (keepdims=1 -> (C, 1, 1); keepdims=0 -> (C,) via a FlattenNode)."""
    a = attributes(node)
    x, s = image_input(ctx, node)
    axes = a.get("axes") if ctx.opset < 18 else (
        ctx.const(node, 1).tolist() if ctx.has_input(node, 1) else None)
    if axes is None or sorted(int(ax) % 4 for ax in np.ravel(axes)) != [2, 3]:
        raise node_error(node, f"ReduceMean over axes {axes} is not supported; only the spatial "
                               "mean over axes (2, 3) (global average pooling) is",
                         "use GlobalAveragePool / mean over dims (2, 3)")
    out = node.output[0]
    keep = a.get("keepdims", 1)
    pool = out if keep else ctx.unique_name(f"{out}#avgpool")
    ctx.add(ir.AvgPool2dNode(name=pool, inputs=[x], kernel=s[1:], stride=s[1:]))
    if not keep:
        ctx.add(ir.FlattenNode(name=out, inputs=[pool]))


@register("MaxPool")
def max_pool(ctx: ImportContext, node: onnx.NodeProto) -> None:
    a = attributes(node)
    if len(node.output) > 1 and node.output[1] and node.output[1] in ctx.used:
        raise node_error(node, "the Indices output of MaxPool is used; it has no spiking equivalent",
                         "export MaxPool without return_indices")
    x, kernel, strides, pads = _window(ctx, node, a)
    ctx.add(ir.MaxPool2dNode(name=node.output[0], inputs=[x], kernel=kernel, stride=strides,
                             padding=pads))
    _maxpool_warning(ctx, node)


@register("GlobalMaxPool")
def global_max_pool(ctx: ImportContext, node: onnx.NodeProto) -> None:
    x, s = image_input(ctx, node)
    ctx.add(ir.MaxPool2dNode(name=node.output[0], inputs=[x], kernel=s[1:], stride=s[1:]))
    _maxpool_warning(ctx, node)


def _maxpool_warning(ctx: ImportContext, node: onnx.NodeProto) -> None:
    ctx.warn(f"{node.op_type} node '{node.name or node.output[0]}' (output '{node.output[0]}') "
             "is converted to spike-count max pooling (exact on spike counts; loihi, cyclesim "
             "and netlist carry it, nir cannot: for nir convert with --maxpool avg or --maxpool conv)")
