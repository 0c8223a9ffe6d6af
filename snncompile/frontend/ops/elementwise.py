"""Converters of elementwise arithmetic: Add/Sub/Mul/Div, Sum, and Max/Min with a constant.

An activation combined with a constant that is the same for every pixel of a channel (or
every use of a feature) is a per-channel affine map y = a x + b -> AffineNode: a BatchNorm
written as Mul+Add, input normalization (x - mean) / std, the bias Add after a MatMul. Two
activations of equal shape may be added (residual connections) -> AddNode. Max(x, 0) is a
ReLU and Min(ReLU(x), m) a clipped ReLU (ReLU6 written as torch.minimum / tf.minimum).
"""

from __future__ import annotations

import numpy as np
import onnx

from ... import ir
from ..context import ImportContext, node_error
from ..registry import register


@register("Add", "Sub", "Mul", "Div")
def arithmetic(ctx: ImportContext, node: onnx.NodeProto) -> None:
    op = node.op_type
    left_act, right_act = ctx.is_act(node.input[0]), ctx.is_act(node.input[1])
    if left_act and right_act:
        if op != "Add":
            raise node_error(node, f"{op} of two activations has no spiking equivalent",
                             "only Add (residual connections) may combine two activations")
        _add_activations(ctx, node, [node.input[0], node.input[1]])
        return
    act_pos = 0 if left_act else 1
    x = ctx.act(node, act_pos)
    c = _per_channel(ctx, node, ctx.weight(node, 1 - act_pos, "constant", np.float64),
                     ctx.shape(x))
    one, zero = np.ones_like(c), np.zeros_like(c)
    if op == "Add":
        w, b = one, c
    elif op == "Mul":
        w, b = c, zero
    elif op == "Sub":
        w, b = (one, -c) if act_pos == 0 else (-one, c)
    else:  # Div
        if act_pos == 1:
            raise node_error(node, "dividing a constant by an activation (1/x) has no spiking "
                                   "equivalent")
        if np.any(c == 0):
            raise node_error(node, "division by a constant that contains zeros")
        w, b = 1.0 / c, zero
    ctx.add(ir.AffineNode(name=node.output[0], inputs=[x], weight=w.astype(np.float32),
                          bias=b.astype(np.float32)))


@register("Sum")
def sum_(ctx: ImportContext, node: onnx.NodeProto) -> None:
    if any(ctx.is_const(t) for t in node.input):
        raise node_error(node, "Sum with a constant operand is not supported",
                         "write the constant as a bias (Add) instead")
    if len(node.input) == 1:
        ctx.alias(node.output[0], ctx.act(node, 0))
        return
    _add_activations(ctx, node, list(node.input))


@register("Max", "Min")
def max_min(ctx: ImportContext, node: onnx.NodeProto) -> None:
    """Max(x, 0) -> ReluNode; Min(ReLU(x), m) with m > 0 -> ReluNode(max_value=m) on x."""
    op = node.op_type
    acts = [i for i, t in enumerate(node.input) if ctx.is_act(t)]
    hint = "write the activation as ReLU, ReLU6 or Clip(min=0, max=m)"
    if len(node.input) != 2 or len(acts) != 1:
        raise node_error(node, f"{op} of {len(acts)} activation(s) and {len(node.input) - len(acts)} "
                               "constant(s); only the max with 0 (a ReLU) or the min of a ReLU with "
                               "a positive constant (a clipped ReLU) map onto spiking neurons", hint)
    x = ctx.act(node, acts[0])
    c = ctx.weight(node, 1 - acts[0], "constant")
    if c.size != 1 and not np.all(c == c.reshape(-1)[0]):
        raise node_error(node, f"{op} with a constant that varies ({c.min():.4g} .. {c.max():.4g}); "
                               "only one value for every element is a (clipped) ReLU", hint)
    c0 = float(c.reshape(-1)[0])
    out = node.output[0]
    if op == "Max":
        if c0 != 0.0:
            raise node_error(node, f"Max(x, {c0:g}) is not a ReLU; only Max(x, 0) is", hint)
        ctx.add(ir.ReluNode(name=out, inputs=[x], calib_tensor=out))
        return
    relu = ctx.node(x)
    if not isinstance(relu, ir.ReluNode) or c0 <= 0.0:
        raise node_error(node, f"Min(x, {c0:g}) is a clipped ReLU only on a ReLU's output and with "
                               "a positive constant", hint)
    hi = c0 if relu.max_value is None else min(c0, relu.max_value)
    if ctx.readers.get(node.input[acts[0]], 0) == 1 and node.input[acts[0]] == x:
        ctx.drop_unread(x)  # the unclipped ReLU feeds nothing else
    ctx.add(ir.ReluNode(name=out, inputs=list(relu.inputs), calib_tensor=out, max_value=hi))


def _add_activations(ctx: ImportContext, node: onnx.NodeProto, tensors: list[str]) -> None:
    names = [ctx.tensors[t] for t in tensors]
    shapes = [ctx.shape(n) for n in names]
    if any(s != shapes[0] for s in shapes):
        raise node_error(node, f"adds activations of different shapes {shapes} (broadcasting)",
                         "residual branches must have equal shapes")
    ctx.add(ir.AddNode(name=node.output[0], inputs=names))


def _per_channel(ctx: ImportContext, node: onnx.NodeProto, c: np.ndarray,
                 shape: tuple[int, ...]) -> np.ndarray:
    """The constant as a (C,) vector along the first per-sample axis, or a ModelError."""
    rank = len(shape) + 1
    if c.ndim > rank:
        raise node_error(node, f"constant of shape {c.shape} has more dimensions than the "
                               f"activation (N, {', '.join(map(str, shape))})")
    full = (1,) * (rank - c.ndim) + c.shape
    n_ch = shape[0]
    if full[0] != 1:
        raise node_error(node, f"constant of shape {c.shape} differs between samples of a batch")
    if any(d != 1 for d in full[2:]) or full[1] not in (1, n_ch):
        raise node_error(node, f"constant of shape {c.shape} is not per-channel for an activation "
                               f"of per-sample shape {shape}; only scalars or one value per "
                               "channel/feature can be folded into the network",
                         "use a per-channel scale/offset (shape (1, C, 1, 1) or (C, 1, 1))")
    return np.broadcast_to(c.reshape(full[1]), (n_ch,)).copy()
