"""The ANN side of a tandem step: the values gradients flow through.

A spiking layer passes on the value of its spike counts; backward, its gradient goes to the
ANN activation computed from the same inputs with the same quantized weights
(:func:`straight_through`). A layer not spiking yet passes the value its count will stand
for (:class:`CountModel`). The weighted ops run on the float path in the memory layout the
simulator keeps (:func:`layout`).
"""

from __future__ import annotations


import numpy as np
import torch

from ..ir import AffineNode, Conv2dNode, DenseNode, Graph
from ..passes import quantize
from ..sim.padding import pad2d
from ..sim.weighted import channels_last_strides
from .runtime import kernels


class CountModel(torch.autograd.Function):
    """``lam * clamp(floor(z T / lam + 1/2), 0, T) / T`` forward, the gradient of
    ``min(relu(z), lam)`` backward (1 inside (0, lam), 1/2 where z equals lam, as torch
    splits a tie), as one op: it runs on every hidden activation of every training step, and
    one op makes fewer passes over them than the torch ops it replaced, with the same values."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, lam: torch.Tensor, T: int) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(z, lam)
        src = kernels.flat(z) if lam.numel() == 1 and lam.dtype == torch.float32 else None
        if src is not None:  # one pass (snncompile.tune.runtime.kernels), the same values
            out = torch.empty_like(z)
            kernels.count_levels(src, np.float32(lam.reshape(()).item()), T, kernels.flat(out))
            return out
        v = z * (T / lam)
        return v.add_(0.5).floor_().clamp_(0, T).mul_(lam).div_(T)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        z, lam = ctx.saved_tensors
        if lam.numel() == 1 and lam.dtype == torch.float32 and kernels.same_layout(grad, z):
            src, g = kernels.flat(z), kernels.flat(grad)
            if src is not None and g is not None:
                out = torch.empty_like(z)
                kernels.clamp_grad(src, g, np.float32(lam.reshape(()).item()), kernels.flat(out))
                return out, None, None
        out = grad * ((z > 0) & (z < lam))
        tie = z == lam
        if bool(tie.any()):  # lam is a percentile of the activations, so some can equal it
            out = out + grad * tie * 0.5
        return out, None, None


def straight_through(value: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """Exactly ``value`` forward, the gradient of ``surrogate`` backward
    (``surrogate + (value - surrogate).detach()`` can be off by a rounding step, and the
    forward must be the integer network's values exactly)."""
    return _StraightThrough.apply(value, surrogate)


class _StraightThrough(torch.autograd.Function):
    """``value`` (a view of it: no pass over memory) forward, the incoming gradient passed
    unchanged to ``surrogate`` (and to ``value``, where it has one) backward: what
    ``value + (surrogate - surrogate.detach())`` computes, without its two passes over
    every spiking layer's values on every step."""

    @staticmethod
    def forward(ctx, value: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if value.shape != surrogate.shape:
            raise ValueError(f"straight-through of shape {tuple(value.shape)} onto {tuple(surrogate.shape)}")
        return value.view_as(value)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return (grad if ctx.needs_input_grad[0] else None), grad


def unit_scales(g: Graph, name: str) -> tuple[np.ndarray, np.ndarray]:
    """:func:`..passes.quantize.unit_scales` of weighted node ``name``, the input's scale in
    float32 (as the float weights it multiplies)."""
    s_in, s_out = quantize.unit_scales(g, g[name])
    return s_in.astype(np.float32), s_out


def layout(x: torch.Tensor) -> torch.Tensor:
    """The memory layout of the surrogate (ANN) path's values: channels-last for images,
    as the simulator keeps its own. Convolutions on the CPU (oneDNN) run channels-last
    without reordering their operands, and a training step at PTL's first stages is mostly
    the ANN's convolutions and their backward."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def conv(n, x):
    # weight as the input, so no reorder per call; a one-channel input (and its weight)
    # restrided so that torch takes it, and writes the output, channels-last
    w = channels_last_strides(layout(n.weight))
    top, left, bottom, right = n.padding
    if top == bottom and left == right:  # the convolution's own padding: no padded copy
        return layout(torch.nn.functional.conv2d(channels_last_strides(x), w, n.bias, stride=n.stride,
                                                  padding=(top, left), dilation=n.dilation, groups=n.groups))
    return layout(torch.nn.functional.conv2d(channels_last_strides(pad2d(x, n.padding)), w, n.bias,
                                              stride=n.stride, dilation=n.dilation, groups=n.groups))


def dense(n, x):
    return torch.nn.functional.linear(x, n.weight, n.bias)


def affine(n, x):
    view = (1, -1) + (1,) * (x.dim() - 2)
    y = x * n.weight.reshape(view)
    return y if n.bias is None else y + n.bias.reshape(view)


WEIGHTED = {Conv2dNode: conv, DenseNode: dense, AffineNode: affine}
