"""The weighted ops (dense, convolution, per-channel affine) on integer values, exactly.

Products of integer weights and integer inputs are summed in float32 where the plan's
bounds show the sums stay below 2^24 (else weights are split into float32 digits, or the
op runs in float64), convolution results are rounded to absorb the algorithm's transform
error, and convolutions of spike codes run on int8 kernels where they exist. A traced
formulation (:func:`weighted_traced`) computes the same integers for training, where
gradients must flow through every product.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..ir import Conv2dNode, DenseNode, WeightedNode
from .bounds import EXACT_F32
from .kernels import spike_conv
from .padding import pad2d
from .plan import Plan
from .values import Value, as_dtype


def exact_in_float32(n: WeightedNode, a: torch.Tensor, wmax: float) -> torch.Tensor:
    """Rows of an event input ``a`` (M, ...) whose weighted sums are exact in float32 whatever
    the order of summation: max|w| times the most events any one output sees stays below
    2^24. Worst-case bounds over all inputs put nodes in float64; actual spike inputs are
    sparse, so most rows pass and take one float32 product instead of several digit ones."""
    if isinstance(n, DenseNode):
        seen = a.sum(dim=1)
    else:
        per_position = pad2d(a.sum(dim=1, keepdim=True), n.padding)
        box = torch.ones((1, 1) + tuple(n.weight_int.shape[2:]), dtype=a.dtype, device=a.device)
        seen = F.conv2d(per_position, box, None, n.stride, 0, n.dilation).amax(dim=(1, 2, 3))
    return seen * wmax < EXACT_F32


def channels_last_strides(t: torch.Tensor) -> torch.Tensor:
    """A contiguous 4-D tensor of one channel restrided as channels-last (the same memory:
    with one channel both layouts order its elements alike); other tensors as they are.
    Made contiguous in channels-last, a one-channel tensor keeps its row-major strides, and
    oneDNN then runs the convolution, and writes its output, row-major: an image network's
    first layer would cost a copy to channels-last after it and a slow weight gradient."""
    if t.dim() != 4 or t.shape[1] != 1 or not t.is_contiguous():
        return t
    _, _, h, w = t.shape
    return t.as_strided(tuple(t.shape), (h * w, 1, w, 1))


def _int8_conv_codes(n: Conv2dNode, x: Value, plan: Plan, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The convolution (plus ``bias`` at every step, where given) over the window of spikes
    held as codes, (T, N, *shape), by the int8 kernels: the float32 convolution's values
    exactly (:mod:`.kernels.spike_conv`). Silent steps cost what others do here (a silent step's
    codes convolve to zero)."""
    key = (n.name, x.signed)
    pad = n.padding[:2]
    if key not in plan.packed8:
        plan.packed8[key] = spike_conv.prepack(plan.w8[n.name], x.signed, n.stride, pad, n.dilation, n.groups)
    c = x.codes
    k, nb = c.shape[:2]
    y = spike_conv.conv(c.reshape((k * nb,) + tuple(c.shape[2:])), plan.packed8[key], x.signed, n.stride,
                        pad, n.dilation, n.groups, int(n.weight_int.shape[0]), bias=bias)
    return y.reshape((k, nb) + tuple(y.shape[1:]))


def weighted(n: WeightedNode, x: Value, plan: Plan) -> Value:
    dt = plan.dtype[n.name]
    T = plan.T
    w, b = plan.w[n.name], plan.b[n.name]
    parts = plan.parts.get(n.name)

    def exact(a: torch.Tensor, single, by_parts) -> torch.Tensor:
        """``by_parts`` (float32 products of weight digits, summed in float64) where a
        worst-case bound needs it; ``single`` (one float32 product) on the rows of an event
        input that are exact in float32 anyway."""
        if not (x.events or x.signed):
            return by_parts(a)
        # signed spikes: the bound takes their magnitudes (|sum of w * s| <= max|w| * sum |s|)
        ok = exact_in_float32(n, a.abs() if x.signed else a, plan.wmax[n.name])
        n_ok = int(ok.sum())
        if n_ok == ok.numel():
            return single(a).to(dt)
        if n_ok == 0:
            return by_parts(a)
        first = single(a[ok]).to(dt)
        y = torch.empty((a.shape[0],) + tuple(first.shape[1:]), dtype=dt, device=a.device,
                        memory_format=torch.channels_last if first.dim() == 4 else torch.contiguous_format)
        y[ok] = first
        y[~ok] = by_parts(a[~ok])
        return y

    if isinstance(n, DenseNode):
        if parts:
            w32 = plan.w32[n.name]
            y = x.map(lambda a: exact(as_dtype(a, torch.float32), lambda r: r @ w32.T,
                                      lambda r: sum(torch.round(r @ p.T).to(dt) * f for p, f in parts)))
        else:
            y = x.map(lambda a: as_dtype(a, dt) @ w.T)
    elif isinstance(n, Conv2dNode):
        pt, pl, pb, pr = n.padding

        # symmetric padding is the convolution's own (no padded copy of the input)
        inner = (pt, pl) if (pt, pl) == (pb, pr) else (0, 0)

        def conv(a: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
            if inner == (0, 0):
                a = pad2d(a, n.padding)
            y = F.conv2d(channels_last_strides(a), channels_last_strides(weight), None, n.stride, inner,
                         n.dilation, n.groups).round_()
            # the IF layer and pools after this node run on the current's layout
            return y.contiguous(memory_format=torch.channels_last)

        def by_parts(a: torch.Tensor) -> torch.Tensor:
            return sum(conv(a, p).to(dt) * f for p, f in parts)

        def layer(a: torch.Tensor) -> torch.Tensor:
            # channels-last: the layout oneDNN's CPU convolutions take without reordering
            a = as_dtype(a, torch.float32 if parts else dt).contiguous(memory_format=torch.channels_last)
            if parts:
                return exact(a, lambda r: conv(r, plan.w32[n.name]), by_parts)
            return conv(a, w)
        if x.kind == "full" and x.codes is not None and n.name in plan.w8 and (pt, pl) == (pb, pr):
            if b is not None and n.bias_mode == "every_step":  # added in the kernel, not in a pass after
                return Value(_int8_conv_codes(n, x, plan, b))
            y = Value(_int8_conv_codes(n, x, plan), active=x.active)
        else:
            y = x.map(layer)
    else:  # AffineNode: per-channel multiplier
        y = x.map(lambda a: as_dtype(a, dt) * w.reshape((1, -1) + (1,) * (a.dim() - 2)))
    if b is None:
        return y
    b = b.reshape((-1,) + (1,) * (len(n.shape) - 1))
    if n.bias_mode == "every_step":
        if y.kind == "first":
            y = Value(y.full(T))
        return Value(y.data.add_(b) if y.kind == "full" else y.data + b, y.kind)
    if y.kind == "first":
        return Value(y.data + T * b, "first")
    data = y.full(T).clone()
    data[0] += T * b
    return Value(data)


def _round_straight_through(y: torch.Tensor) -> torch.Tensor:
    """Round to integers; a tensor that carries gradients keeps them (straight through)."""
    if not y.requires_grad:
        return torch.round(y)
    return torch.round(y.detach()) + (y - y.detach())


def weighted_traced(n: WeightedNode, x: Value, plan: Plan, w: torch.Tensor,
                     b: torch.Tensor | None) -> Value:
    """The weighted op with weights ``w`` and bias ``b`` that carry gradients: the values of
    :func:`weighted`, computed over every step of the window in one plain layout (no
    silent step skipped, no weight split into digits, no int8 kernel), so that autograd
    sees every product and the gradients do not depend on the data's sparsity."""
    dt = plan.dtype[n.name]
    T = plan.T
    w = w.to(dt)
    xs = x.full(T).to(dt).contiguous()  # row-major, whatever layout the values came in
    if isinstance(n, DenseNode):
        y = _round_straight_through(xs @ w.T)
        per_c: tuple[int, ...] = ()
    elif isinstance(n, Conv2dNode):
        k, nb = xs.shape[:2]
        flat = pad2d(xs.reshape((k * nb,) + tuple(xs.shape[2:])), n.padding)
        y = _round_straight_through(F.conv2d(flat, w, None, n.stride, 0, n.dilation, n.groups))
        y = y.reshape((k, nb) + tuple(y.shape[1:]))
        per_c = (1, 1)
    else:  # AffineNode
        per_c = (1,) * (xs.dim() - 3)
        y = xs * w.reshape((-1,) + per_c)
    if b is not None:
        b = b.to(dt).reshape((-1,) + per_c)
        if n.bias_mode == "every_step":
            y = y + b
        else:
            y = y.clone()
            y[0] = y[0] + T * b
    return Value(y)
