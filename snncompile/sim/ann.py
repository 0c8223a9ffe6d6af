"""Float forward pass of an ANN graph of the IR, in torch (float32).

This is the reference for what the imported graph computes: it must agree with onnxruntime
on the original ONNX model. Padding is always explicit: zeros for convolution and average
pooling (padding counts in the 1/k^2 divisor, count_include_pad semantics), -inf for max
pooling; asymmetric padding is applied with ``F.pad`` before the op.
"""

from __future__ import annotations

import functools
import operator
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .. import ir
from ..errors import DataError, ModelError
from .padding import pad2d, pad_axes

_Eval = Callable[[ir.Node, list[torch.Tensor]], torch.Tensor]


def ann_forward(graph: ir.Graph, x: np.ndarray | torch.Tensor,
                return_all: bool = False) -> torch.Tensor | dict[str, torch.Tensor]:
    """Evaluate ``graph`` on a batch ``x`` of shape (N, *input shape).

    Returns the first output as a float32 tensor, or with ``return_all`` a dict of every
    node's output by node name. Runs without autograd.
    """
    xt = torch.as_tensor(np.asarray(x, dtype=np.float32) if not isinstance(x, torch.Tensor) else x)
    xt = xt.to(torch.float32)
    want = tuple(graph.input.shape)
    if tuple(xt.shape[1:]) != want:
        raise DataError(f"input batch has shape {tuple(xt.shape)}, the model expects (N, "
                        f"{', '.join(map(str, want))})",
                        "pass data in the model's input layout with the batch axis first")
    values: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for n in graph.nodes:
            if isinstance(n, ir.InputNode):
                values[n.name] = xt
                continue
            fn = _EVALUATORS.get(type(n))
            if fn is None:
                raise ModelError(f"ann_forward evaluates ANN graphs; node '{n.name}' ({n.op}) has "
                                 "no float forward", "pass the graph from import_onnx")
            values[n.name] = fn(n, [values[i] for i in n.inputs])
    return values if return_all else values[graph.outputs[0]]


def _t(a: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(np.asarray(a, dtype=np.float32), device=like.device)  # copies: inputs may be read-only


def _conv(n: ir.Conv2dNode, ins: list[torch.Tensor]) -> torch.Tensor:
    x = pad2d(ins[0], n.padding)
    b = None if n.bias is None else _t(n.bias, x)
    return F.conv2d(x, _t(n.weight, x), b, stride=n.stride, dilation=n.dilation, groups=n.groups)


def _dense(n: ir.DenseNode, ins: list[torch.Tensor]) -> torch.Tensor:
    x = ins[0]
    return F.linear(x, _t(n.weight, x), None if n.bias is None else _t(n.bias, x))


def _affine(n: ir.AffineNode, ins: list[torch.Tensor]) -> torch.Tensor:
    x = ins[0]
    view = (1, -1) + (1,) * (x.dim() - 2)
    y = x * _t(n.weight, x).reshape(view)
    return y if n.bias is None else y + _t(n.bias, x).reshape(view)


def _relu(n: ir.ReluNode, ins: list[torch.Tensor]) -> torch.Tensor:
    y = torch.relu(ins[0])
    return y if n.max_value is None else torch.clamp(y, max=float(n.max_value))


def _avgpool(n: ir.AvgPool2dNode, ins: list[torch.Tensor]) -> torch.Tensor:
    x = pad2d(ins[0], n.padding)
    return F.avg_pool2d(x, n.kernel, n.stride)


def _maxpool(n: ir.MaxPool2dNode, ins: list[torch.Tensor]) -> torch.Tensor:
    x = pad2d(ins[0], n.padding, value=float("-inf"))
    return F.max_pool2d(x, n.kernel, n.stride)


def _pad(n: ir.PadNode, ins: list[torch.Tensor]) -> torch.Tensor:
    return pad_axes(ins[0], n.pads)


_EVALUATORS: dict[type, _Eval] = {
    ir.Conv2dNode: _conv,
    ir.DenseNode: _dense,
    ir.AffineNode: _affine,
    ir.ReluNode: _relu,
    ir.AvgPool2dNode: _avgpool,
    ir.MaxPool2dNode: _maxpool,
    ir.FlattenNode: lambda n, ins: ins[0].reshape(ins[0].shape[0], -1),
    ir.ReshapeNode: lambda n, ins: ins[0].reshape(ins[0].shape[0], *n.target),
    ir.AddNode: lambda n, ins: functools.reduce(operator.add, ins),
    ir.ConcatNode: lambda n, ins: torch.cat(ins, dim=n.axis + 1),
    ir.PadNode: _pad,
}
