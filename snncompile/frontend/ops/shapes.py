"""Converters of shape and plumbing ops: Shape, Size, Flatten, Reshape, Squeeze, Unsqueeze,
Concat, Pad, and the pass-through ops Identity, Dropout, Cast, CastLike.

The batch axis never appears in the IR: shape ops act per sample, and any op that would move
data between the batch axis and the features is refused.
"""

from __future__ import annotations

import numpy as np
import onnx

from ... import ir
from ..context import ImportContext, attributes, node_error
from ..registry import register

_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
                onnx.TensorProto.BFLOAT16}
_MIX_HINT = "keep the batch axis first and reshape only the features, e.g. x.view(x.size(0), -1)"


@register("Shape")
def shape(ctx: ImportContext, node: onnx.NodeProto) -> None:
    """The shape of an activation is a constant: the batch size (a sentinel when dynamic)
    followed by the per-sample shape."""
    a = attributes(node)
    full = np.array(ctx.full_shape(ctx.act(node)), dtype=np.int64)
    ctx.consts[node.output[0]] = full[a.get("start", 0):a.get("end", None)]


@register("Size")
def size(ctx: ImportContext, node: onnx.NodeProto) -> None:
    """The element count of an activation is a constant (with the batch size in it)."""
    ctx.consts[node.output[0]] = np.array(int(np.prod(ctx.full_shape(ctx.act(node)))), dtype=np.int64)


@register("Identity")
def identity(ctx: ImportContext, node: onnx.NodeProto) -> None:
    ctx.alias(node.output[0], ctx.act(node))


@register("Dropout")
def dropout(ctx: ImportContext, node: onnx.NodeProto) -> None:
    """Inference-mode dropout is the identity; its mask output must be unused."""
    if len(node.output) > 1 and node.output[1] and node.output[1] in ctx.used:
        raise node_error(node, "the mask output of Dropout is used", "export the model in eval() mode")
    ctx.alias(node.output[0], ctx.act(node))


@register("Cast")
def cast(ctx: ImportContext, node: onnx.NodeProto) -> None:
    to = attributes(node).get("to")
    if to not in _FLOAT_TYPES:
        name = onnx.TensorProto.DataType.Name(to) if to is not None else "?"
        raise node_error(node, f"casts an activation to {name}; only float-to-float casts are "
                               "supported", "remove integer casts/quantization from the model")
    ctx.alias(node.output[0], ctx.act(node))


@register("CastLike")
def cast_like(ctx: ImportContext, node: onnx.NodeProto) -> None:
    """Cast input 0 to the type of input 1. The dynamo exporter without its optimizer casts
    constants (a conv's zero bias) like the activation: that stays a constant, as float32
    because every activation is float; an activation cast like a float is itself."""
    if ctx.is_const(node.input[0]):
        like = node.input[1]
        v = np.asarray(ctx.consts[node.input[0]])
        ctx.consts[node.output[0]] = v.astype(np.float32) if not ctx.is_const(like) \
            else v.astype(np.asarray(ctx.consts[like]).dtype)
        return
    if ctx.is_const(node.input[1]) and np.asarray(ctx.consts[node.input[1]]).dtype.kind != "f":
        raise node_error(node, "casts an activation to an integer type; only float-to-float casts "
                               "are supported", "remove integer casts/quantization from the model")
    ctx.alias(node.output[0], ctx.act(node))


@register("Flatten")
def flatten(ctx: ImportContext, node: onnx.NodeProto) -> None:
    x = ctx.act(node)
    axis = attributes(node).get("axis", 1)
    if axis % (len(ctx.shape(x)) + 1) != 1:
        raise node_error(node, f"Flatten with axis={axis} merges the batch axis with features",
                         "flatten with axis=1 (torch.flatten(x, 1))")
    _emit_reshape(ctx, node, x, (int(np.prod(ctx.shape(x))),))


@register("Reshape")
def reshape(ctx: ImportContext, node: onnx.NodeProto) -> None:
    """Reshape to a constant target whose leading entry is the batch (batch size, -1 or 0)."""
    x = ctx.act(node)
    s = ctx.shape(x)
    target = [int(t) for t in np.asarray(ctx.const(node, 1)).reshape(-1)]
    allowzero = attributes(node).get("allowzero", 0)
    if not target:
        raise node_error(node, "reshape to a scalar drops the batch axis")
    if allowzero and 0 in target:
        raise node_error(node, f"reshape target {target} has a zero-sized dimension")
    full = (ctx.batch, *s)
    resolved = [full[i] if t == 0 and i < len(full) else t for i, t in enumerate(target)]
    lead, rest = resolved[0], resolved[1:]
    n = int(np.prod(s))
    if rest.count(-1) > (0 if lead == -1 else 1):
        raise node_error(node, f"reshape target {target} has more than one -1")
    if -1 in rest:
        known = int(np.prod([d for d in rest if d != -1]))
        if known == 0 or n % known:
            raise node_error(node, f"cannot reshape per-sample shape {s} to {target}")
        rest = [n // known if d == -1 else d for d in rest]
    if lead not in (ctx.batch, -1) or int(np.prod(rest)) != n:
        raise node_error(node, f"reshape of (N, {', '.join(map(str, s))}) to {target} mixes the "
                               "batch axis with the features", _MIX_HINT)
    _emit_reshape(ctx, node, x, tuple(rest))


@register("Squeeze", "Unsqueeze")
def squeeze(ctx: ImportContext, node: onnx.NodeProto) -> None:
    """Dropping or adding size-1 per-sample axes is a reshape (never on the batch axis)."""
    x = ctx.act(node)
    s = list(ctx.shape(x))
    a = attributes(node)
    axes = a.get("axes") if ctx.opset < 13 else (
        [int(v) for v in np.ravel(ctx.const(node, 1))] if ctx.has_input(node, 1) else None)
    if node.op_type == "Squeeze":
        full = [ctx.batch, *s]
        if axes is None:
            axes = [i for i, d in enumerate(full) if d == 1]
        axes = sorted({int(ax) % len(full) for ax in axes})
        if 0 in axes or any(full[i] != 1 for i in axes):
            raise node_error(node, f"squeezes axes {axes} of (N, {', '.join(map(str, s))}); only "
                                   "size-1 per-sample axes may be removed", _MIX_HINT)
        out = [d for i, d in enumerate(full) if i not in axes][1:]
    else:
        if axes is None:
            raise node_error(node, "Unsqueeze without axes")
        rank = len(s) + 1 + len(axes)
        axes = sorted({int(ax) % rank for ax in axes})
        if 0 in axes:
            raise node_error(node, "adds an axis before the batch axis", _MIX_HINT)
        out, it = [], iter(s)
        for i in range(1, rank):
            out.append(1 if i in axes else next(it))
    _emit_reshape(ctx, node, x, tuple(out))


@register("Concat")
def concat(ctx: ImportContext, node: onnx.NodeProto) -> None:
    if any(ctx.is_const(t) for t in node.input):
        raise node_error(node, "concatenates a constant tensor with activations",
                         "only activations may be concatenated")
    names = [ctx.act(node, i) for i in range(len(node.input))]
    rank = len(ctx.shape(names[0])) + 1
    axis = int(attributes(node).get("axis", 1)) % rank
    if axis == 0:
        raise node_error(node, "concatenation along the batch axis", "concatenate along channels")
    if len(names) == 1:
        ctx.alias(node.output[0], names[0])
        return
    ctx.add(ir.ConcatNode(name=node.output[0], inputs=names, axis=axis - 1))


@register("Pad")
def pad(ctx: ImportContext, node: onnx.NodeProto) -> None:
    """Constant zero padding of per-sample axes -> PadNode."""
    a = attributes(node)
    x = ctx.act(node)
    s = ctx.shape(x)
    rank = len(s) + 1
    if a.get("mode", "constant") != "constant":
        raise node_error(node, f"pad mode '{a['mode']}' is not supported; only zero padding is",
                         "use zero (constant) padding")
    if ctx.opset < 11:
        pads, value, axes = list(a.get("pads", [])), float(a.get("value", 0.0)), None
    else:
        pads = [int(p) for p in np.ravel(ctx.const(node, 1))]
        value = float(np.ravel(ctx.const(node, 2))[0]) if ctx.has_input(node, 2) else 0.0
        axes = [int(v) % rank for v in np.ravel(ctx.const(node, 3))] if ctx.has_input(node, 3) else None
    if value != 0.0:
        raise node_error(node, f"padding with the value {value} is not supported; only zeros are")
    axes = list(range(rank)) if axes is None else axes
    if len(pads) != 2 * len(axes):
        raise node_error(node, f"pads {pads} do not match {len(axes)} axes")
    begin, end = [0] * rank, [0] * rank
    for k, ax in enumerate(axes):
        begin[ax], end[ax] = pads[k], pads[k + len(axes)]
    if begin[0] or end[0]:
        raise node_error(node, "pads the batch axis", "pad only the per-sample axes")
    if min(begin + end) < 0:
        raise node_error(node, f"negative pads {pads} (cropping) are not supported")
    if not any(begin + end):
        ctx.alias(node.output[0], x)
        return
    ctx.add(ir.PadNode(name=node.output[0], inputs=[x], pads=tuple(begin[1:] + end[1:])))


def _emit_reshape(ctx: ImportContext, node: onnx.NodeProto, x: str, target: tuple[int, ...]) -> None:
    """Alias when the shape is unchanged, FlattenNode for a vector, else ReshapeNode."""
    s = ctx.shape(x)
    if tuple(target) == tuple(s):
        ctx.alias(node.output[0], x)
    elif len(target) == 1:
        ctx.add(ir.FlattenNode(name=node.output[0], inputs=[x]))
    else:
        ctx.add(ir.ReshapeNode(name=node.output[0], inputs=[x], target=tuple(target)))
