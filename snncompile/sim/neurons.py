"""Spiking units over the window: integrate-and-fire layers and max pooling of spikes
(with the integer sum pooling that feeds them).

The IF step has three formulations, each for a reason: the one-pass numba kernel of
:mod:`.kernels.if_kernel` (speed on the CPU), the in-place torch loop (any device, no
gradients) and the out-of-place torch loop that carries gradients (surrogate-gradient
training needs every membrane kept and a float64 membrane). All give the same integers;
tests check the first two against each other and against the step-by-step oracle
(tests/step_simulator.py), and the traced one against both.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..ir import AvgPool2dNode, IFNode, MaxPool2dNode
from .padding import pad2d
from .plan import Plan
from .values import Value, as_dtype, wider


def integrate_and_fire(n: IFNode, current: Value, plan: Plan, sat: dict[str, int],
                        counts_only: bool = False) -> Value:
    """The IF layer over the window: (T, N, *shape) spikes as float32 0/1, or with
    ``counts_only`` (no node reads the spikes) only their counts, a value of kind "counts"."""
    if plan.device.type == "cpu" and plan.fused_if:
        return _integrate_and_fire_fused(n, current, plan, sat, counts_only)
    return _integrate_and_fire_steps(n, current, plan, sat, counts_only)


def _dense_order(x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """``x`` and the order of its dimensions in memory, axis 0 first: the permutation that
    makes it contiguous (channels-last tensors), or ``x`` made contiguous."""
    order = [0] + sorted(range(1, x.dim()), key=lambda d: (-x.stride(d), d))
    if x.permute(order).is_contiguous():
        return x, order
    return x.contiguous(), list(range(x.dim()))


def _integrate_and_fire_fused(n: IFNode, current: Value, plan: Plan, sat: dict[str, int],
                              counts_only: bool = False) -> Value:
    """The IF layer by the one-pass CPU kernel, on the current's own memory layout."""
    from .kernels.if_kernel import EVERY_STEP, FIRST_STEP, FULL, integrate_and_fire

    T = plan.T
    dt, may_saturate = plan.membrane[n.name]
    x = current.data if current.kind == "full" else current.data.unsqueeze(0)
    step_shape = tuple(x.shape[1:])
    x, order = _dense_order(as_dtype(x, dt))
    step_order = [d - 1 for d in order[1:]]
    inverse = [order.index(d) for d in range(len(order))]

    # thresholds and initial membranes per sample when samples are outermost in memory (the
    # kernel repeats them), else for every neuron of the batch
    per_sample = step_order[0] == 0 and all(
        t is None or t.dim() < len(step_shape) or t.shape[0] == 1 for t in (plan.th[n.name], plan.v0[n.name]))

    def flat(t: torch.Tensor | None) -> np.ndarray:
        t = torch.zeros((), dtype=dt) if t is None else t
        if per_sample:
            one = t.reshape(t.shape[1:]) if t.dim() == len(step_shape) else t
            return one.expand(step_shape[1:]).permute([d - 1 for d in step_order[1:]]).contiguous().reshape(-1).numpy()
        return t.expand(step_shape).permute(step_order).contiguous().reshape(-1).numpy()

    mode = {"full": FULL, "const": EVERY_STEP, "first": FIRST_STEP}[current.kind]
    res = integrate_and_fire(x.permute(order).reshape(x.shape[0], -1).numpy(), mode, T,
                             flat(plan.th[n.name]), flat(plan.v0[n.name]),
                             n.reset == "subtract",
                             float(2 ** (n.membrane_bits - 1) - 1) if may_saturate else None,
                             keep_spikes=not counts_only, signed=n.spikes == "signed",
                             codes=n.name in plan.code_outputs)
    sat[n.name] += res.saturations
    physical = tuple(step_shape[d] for d in step_order)
    counts = torch.from_numpy(res.counts).reshape(physical).permute(
        [step_order.index(d) for d in range(len(physical))])
    signed = n.spikes == "signed"
    if counts_only:
        return Value(counts, "counts", events=not signed, window_sum=counts, signed=signed)
    spikes = torch.from_numpy(res.spikes).reshape((T,) + physical).permute(inverse)
    if spikes.dtype == torch.uint8:  # codes (for an int8 convolution reading this layer)
        return Value(None, events=not signed, active=torch.from_numpy(res.active), window_sum=counts,
                    signed=signed, codes=spikes)
    return Value(spikes, events=not signed, active=torch.from_numpy(res.active), window_sum=counts,
                signed=signed)


def _integrate_and_fire_steps(n: IFNode, current: Value, plan: Plan, sat: dict[str, int],
                              counts_only: bool = False) -> Value:
    """The IF layer step by step with torch operations (any device)."""
    T = plan.T
    dt, may_saturate = plan.membrane[n.name]
    cur = as_dtype(current.data, dt)
    shape = tuple(cur.shape[1:]) if current.kind == "full" else tuple(cur.shape)
    v = torch.zeros(shape, dtype=dt, device=cur.device)
    if plan.v0[n.name] is not None:
        v += plan.v0[n.name]
    th = plan.th[n.name]
    lim = float(2 ** (n.membrane_bits - 1) - 1)
    # Spikes are kept as float32 0/1: the next layer's convolution takes them as they are, and
    # float comparisons and multiply-adds run many times faster than the same ops on bool.
    spikes = torch.empty((1 if counts_only else T,) + shape, dtype=torch.float32, device=cur.device)
    counts = torch.zeros(shape, dtype=torch.float32, device=cur.device) if counts_only else None
    signed = n.spikes == "signed"
    net = torch.zeros(shape, dtype=dt, device=cur.device) if signed else None  # spikes so far
    for t in range(T):
        if current.kind == "full":
            v += cur[t]
        elif current.kind == "const" or t == 0:
            v += cur
        if may_saturate:
            lo, hi = torch.aminmax(v)
            if float(hi) > lim or float(lo) < -lim:
                sat[n.name] += int((v.abs() > lim).sum())
                v.clamp_(-lim, lim)
        if signed:  # +1 at the threshold, else -1 below 0 once the net count is above 0
            st = torch.ge(v, th).to(dt) - (torch.lt(v, 0) & torch.gt(net, 0)).to(dt)
            v.addcmul_(st, th, value=-1)
            net += st
            s = spikes[0 if counts_only else t]
            s.copy_(st)
            if counts_only:
                counts += s
            continue
        s = torch.ge(v, th, out=spikes[0 if counts_only else t])
        if n.reset == "subtract":
            v.addcmul_(s, th, value=-1)
        else:
            v.mul_(1 - s)
        if counts_only:
            counts += s
    if counts_only:
        return Value(counts, "counts", events=not signed, window_sum=counts, signed=signed)
    return Value(spikes, events=not signed, signed=signed)


def max_pool_spikes(n: MaxPool2dNode, x: Value, T: int) -> Value:
    """A unit spikes when the running maximum of its inputs' running counts grows."""
    xs = x.full(T)
    # counts <= T: exact in float32; a traced value keeps its gradients' precision
    cum = torch.cumsum(xs, dim=0, dtype=wider(xs.dtype, torch.float32))
    k, nb = cum.shape[:2]
    flat = pad2d(cum.reshape((k * nb,) + tuple(cum.shape[2:])), n.padding)
    m = F.max_pool2d(flat, n.kernel, n.stride).reshape((k, nb) + tuple(n.shape))
    return Value(torch.diff(m, dim=0, prepend=torch.zeros_like(m[:1])), events=True)


def sum_pool(n: AvgPool2dNode, x: torch.Tensor, dt: torch.dtype) -> torch.Tensor:
    """Integer sum over each window of (M, C, H, W), exact for the integer values it sums (the
    divisor is 1); channels-last, where the CPU pooling kernel is vectorised over channels
    (faster than summing strided slices of the window)."""
    x = pad2d(as_dtype(x, wider(x.dtype, dt)), n.padding).contiguous(memory_format=torch.channels_last)
    return F.avg_pool2d(x, n.kernel, n.stride, divisor_override=1)


# A spike step: for an IF layer's step t, its normalized membrane ``u = v / threshold``
# (carrying gradients) and the spikes that fire (0/1, no gradients), the spikes to pass on,
# equal to them in value, with whatever gradient the caller gives them.
SpikeStep = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


def integrate_and_fire_traced(n: IFNode, current: Value, plan: Plan, sat: dict[str, int],
                              step: SpikeStep, detach: bool = False) -> Value:
    """The IF layer with spikes that carry gradients (given them by ``step``; with
    ``detach`` the spikes passed on carry none, their counts do): the integers of
    :func:`integrate_and_fire`, by out-of-place torch operations (autograd needs every
    membrane kept) on a float64 membrane (the normalized membrane's gradient keeps its
    precision). The reset is detached: gradients flow through time along the membrane."""
    T = plan.T
    cur = current.full(T)
    dev = cur.device
    v = torch.zeros(tuple(cur.shape[1:]), dtype=torch.float64, device=dev)
    if n.v_init is not None:
        v = v + torch.as_tensor(n.v_init, dtype=torch.float64, device=dev)
    th = torch.as_tensor(n.threshold, dtype=torch.float64, device=dev)
    lim = float(2 ** (n.membrane_bits - 1) - 1)
    out = []
    for t in range(T):
        v = v + cur[t].to(torch.float64)
        over = v.detach().abs() > lim
        if bool(over.any()):
            sat[n.name] += int(over.sum())
            v = v.clamp(-lim, lim)
        fired = (v.detach() >= th).to(torch.float64)
        out.append(step(t, v / th, fired))
        v = v - fired * th if n.reset == "subtract" else v * (1.0 - fired)
    spikes = torch.stack(out)
    counts = spikes.sum(dim=0)
    return Value(spikes.detach() if detach else spikes, events=True, window_sum=counts)
