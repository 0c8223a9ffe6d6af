"""The reference simulator: the definition of what a converted network computes.

Integer, discrete time, t = 0 .. T-1; every step evaluates all nodes in topological order:

* input: ``x_int = clip(round(x / s_x))``; mode ``once`` injects ``T * x_int`` at t = 0 and
  nothing after; ``every_step`` injects ``x_int`` every step;
* weighted nodes: integer weights times integer inputs, plus ``bias_int`` every step
  (``every_step``) or ``T * bias_int`` at t = 0 only (``first_step``);
* avgpool2d: the integer *sum* over the window (the 1/k^2 is part of the scale);
* IF: ``v += I``; ``v`` saturates at +-(2^(membrane_bits-1) - 1) (counted); spike where
  ``v >= threshold``; reset by subtracting the threshold, or to zero; at most one spike per
  neuron per step, so counts lie in 0..T; ``v`` starts at ``v_init``; with signed spikes a
  neuron whose ``v`` is below 0 while its net count is above 0 emits -1 and gains the
  threshold back (docs/semantics.md);
* maxpool2d on spikes: a unit spikes when the running maximum of its inputs' running spike
  counts grows, so its count is the maximum of its inputs' counts;
* outputs are non-spiking accumulators: real output = ``out_scale * sum_t I[t] / T``.

All arithmetic is exact: tensors hold integers in float32 where a bound shows every partial
sum stays below 2^24, else float64 (exact below 2^53); results of convolutions are rounded
to absorb any transform error of the convolution algorithm.

The graph is evaluated node by node over the whole window (one convolution over T x N
samples instead of T convolutions over N), which equals step-by-step evaluation because a
feed-forward graph has no path back; tests/test_simulator_orders.py checks the two orders
against each other bit for bit. Convolutions run channels-last (oneDNN's own layout on the
CPU); on large CPU runs, or where the caller asks, IF layers run in the one-pass kernel of
``if_kernel.py``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .kernels import spike_conv
from ..errors import DataError, ModelError
from ..ir import (AddNode, AffineNode, AvgPool2dNode, ConcatNode, Conv2dNode, DenseNode,
                 FlattenNode, Graph, IFNode, InputNode, MaxPool2dNode, Node, PadNode,
                 ReshapeNode, WeightedNode)
from ..ir.structure import fanout, spike_driven

EXACT_F32 = 2 ** 24
EXACT_F64 = 2 ** 53


@dataclass
class SimResult:
    """What a simulation returns, per sample (axis 0 is the sample)."""

    outputs: dict[str, np.ndarray]            # real-valued outputs, per output node
    output_acc: dict[str, np.ndarray]         # integer accumulators (sum over T of the input)
    spike_counts: dict[str, np.ndarray]       # per spiking node, (N, *shape) int32 counts
    synops: np.ndarray                        # (N,) synaptic events per sample
    timesteps: int
    saturations: dict[str, int] = field(default_factory=dict)  # membrane saturations per layer
    spikes: dict[str, np.ndarray] | None = None  # (T, N, *shape) uint8 (signed: int8) when recorded
    # (N,) synaptic events per sample of each spike-driven weighted node; they add up to synops
    synops_by_node: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def output(self) -> np.ndarray:
        """The first output (the common single-output case)."""
        return next(iter(self.outputs.values()))


def quantize_input(graph: Graph, x: np.ndarray) -> np.ndarray:
    """Integer input levels of an SNN graph for float inputs ``x`` (N, *shape)."""
    node = graph.input
    if node.out_scale is None:
        raise ModelError("the graph is not converted (its input has no scale)")
    qmax = 2 ** (node.bits - 1) - 1
    q = np.rint(np.asarray(x, dtype=np.float64) / node.out_scale)
    return np.clip(q, -qmax, qmax)


def quantized_input(graph: Graph, x: torch.Tensor) -> torch.Tensor:
    """:func:`quantize_input` of a tensor, as float64 on its device: the integer input of
    :func:`run_window` for float inputs."""
    return torch.as_tensor(quantize_input(graph, x.detach().cpu().numpy()), device=x.device)


def needed(graph: Graph, targets: list[str]) -> set[str]:
    """The names of ``targets`` and all their ancestors: the ``nodes`` a run that computes
    ``targets`` needs (:func:`run_window`)."""
    want: set[str] = set()
    stack = list(targets)
    while stack:
        k = stack.pop()
        if k not in want:
            want.add(k)
            stack.extend(graph[k].inputs)
    return want


def value_bounds(graph: Graph, timesteps: int, only: Collection[str] | None = None) -> dict[str, float]:
    """An upper bound of |value| of every node's per-step integer output (``only``: of
    these nodes, whose inputs are among them or IF nodes, and of the IF nodes)."""
    return _bounds(graph, timesteps, per_step=True, only=only)


def window_bounds(graph: Graph, timesteps: int, only: Collection[str] | None = None) -> dict[str, float]:
    """An upper bound of the sum over the window of |value| of every node's output
    (``only``: as for :func:`value_bounds`)."""
    return _bounds(graph, timesteps, per_step=False, only=only)


def _bounds(graph: Graph, timesteps: int, per_step: bool,
            only: Collection[str] | None = None) -> dict[str, float]:
    """Bounds propagated through the graph: of one step's value (``per_step``: the once
    input and a first-step bias bring T times their value at t = 0), or of the sum over the
    window (T steps of at most one spike; every input and bias adds up to T times its value).
    An IF node's bound holds whatever its inputs, so ``only`` can leave out what feeds one."""
    T = timesteps
    b: dict[str, float] = {}
    for n in graph.nodes:
        if only is not None and n.name not in only and not isinstance(n, (InputNode, IFNode, MaxPool2dNode)):
            continue
        if isinstance(n, InputNode):
            qmax = 2 ** (n.bits - 1) - 1
            b[n.name] = float(qmax * (T if n.mode == "once" or not per_step else 1))
        elif isinstance(n, (IFNode, MaxPool2dNode)):
            b[n.name] = 1.0 if per_step else float(T)
        elif isinstance(n, WeightedNode):
            w = np.abs(n.weight_int).astype(np.float64)
            row = w.max(initial=0) if isinstance(n, AffineNode) else w.reshape(w.shape[0], -1).sum(axis=1).max(initial=0)
            bias = float(np.abs(n.bias_int).max(initial=0)) if n.bias_int is not None else 0.0
            if n.bias_mode == "first_step" or not per_step:
                bias *= T
            b[n.name] = float(row) * b[n.inputs[0]] + bias
        elif isinstance(n, AvgPool2dNode):
            b[n.name] = b[n.inputs[0]] * n.kernel[0] * n.kernel[1]
        elif isinstance(n, AddNode):
            b[n.name] = sum(b[i] for i in n.inputs)
        else:
            b[n.name] = max(b[i] for i in n.inputs)
    return b


class _Plan:
    """Per-node tensors and dtypes prepared once per simulation."""

    def __init__(self, graph: Graph, timesteps: int, device: torch.device, fused_if: bool = False,
                 synops: bool = True, only: Collection[str] | None = None,
                 given: Collection[str] = (), int8_conv: bool = True, weights: bool = True):
        """``only``: prepare only these nodes (a run that simulates a part of the graph, as
        :func:`run_window` with ``nodes``; the training loops build a plan for every batch),
        of which those in ``given`` (IF nodes) are taken as they are, not simulated.
        ``int8_conv``: whether convolutions of spike codes may use the int8 kernels.
        ``weights``: prepare the integer weights (a traced run takes its own, :class:`Traced`)."""
        self.graph = graph
        self.fused_if = fused_if  # CPU: IF layers by the one-pass kernel (if_kernel.py)
        self.T = timesteps
        self.device = device
        bounds = value_bounds(graph, timesteps, only)
        worst = max(bounds.values())
        if worst >= EXACT_F64:
            raise ModelError(f"integer values can reach {worst:.3g}, beyond exact arithmetic (2^53)",
                             "use fewer weight bits or a smaller --timesteps")
        self.dtype = {k: (torch.float32 if v < EXACT_F32 else torch.float64) for k, v in bounds.items()}
        self.w: dict[str, torch.Tensor] = {}
        self.b: dict[str, torch.Tensor | None] = {}
        # Weights split into digits whose products stay exact in float32 (fast kernels), for
        # nodes whose worst-case sums need float64: w = sum_k parts[k] * factor[k].
        self.parts: dict[str, list[tuple[torch.Tensor, float]]] = {}
        # ... and the whole weights in float32 with their largest magnitude, for the rows of a
        # spike input that are exact in float32 (_exact_in_float32)
        self.w32: dict[str, torch.Tensor] = {}
        self.wmax: dict[str, float] = {}
        # Convolutions whose integer weights fit int8: spike inputs held as codes go through
        # the int8 kernels (spike_conv), their weights packed on first use per input kind
        self.w8: dict[str, np.ndarray] = {}
        self.packed8: dict[tuple[str, bool], object] = {}
        planned = [n for n in graph.nodes if (only is None or n.name in only) and n.name not in given]
        for n in planned if weights else ():
            if isinstance(n, WeightedNode):
                if n.weight_int is None:
                    raise ModelError(f"node '{n.name}' has no integer weights: the graph is not converted")
                dt = self.dtype[n.name]
                fmt = torch.channels_last if isinstance(n, Conv2dNode) else torch.contiguous_format
                self.w[n.name] = torch.as_tensor(n.weight_int, dtype=dt, device=device).contiguous(memory_format=fmt)
                self.b[n.name] = (torch.as_tensor(n.bias_int, dtype=dt, device=device)
                                  if n.bias_int is not None else None)
                if dt == torch.float64 and not isinstance(n, AffineNode):
                    parts = _float32_parts(n, bounds[n.inputs[0]])
                    if parts is not None:
                        self.w32[n.name] = torch.as_tensor(n.weight_int, dtype=torch.float32,
                                                           device=device).contiguous(memory_format=fmt)
                        self.wmax[n.name] = float(np.abs(n.weight_int).max(initial=0))
                        self.parts[n.name] = [(torch.as_tensor(p, dtype=torch.float32, device=device)
                                               .contiguous(memory_format=fmt), f) for p, f in parts]
                if (isinstance(n, Conv2dNode) and dt == torch.float32 and int8_conv
                        and spike_conv.available(device.type)
                        and spike_conv.fits(n.weight_int)):
                    self.w8[n.name] = n.weight_int
        # IF layers read directly by such a convolution write their spikes as codes
        self.code_outputs = {graph[name].inputs[0] for name in self.w8}
        # Membranes: |v| never exceeds |v_init| plus the summed |input| (a reset only moves v
        # towards zero), so where that stays within the membrane width no step can saturate.
        self.membrane: dict[str, tuple[torch.dtype, bool]] = {}
        self.th: dict[str, torch.Tensor] = {}        # broadcastable to the layer's shape
        self.v0: dict[str, torch.Tensor | None] = {}
        totals = window_bounds(graph, timesteps, only)
        for n in planned:
            if isinstance(n, IFNode):
                v0 = float(np.abs(n.v_init).max(initial=0)) if n.v_init is not None else 0.0
                reach = v0 + totals[n.inputs[0]]
                th = float(np.max(n.threshold, initial=0))
                worst_v = max(reach, th)
                dt = torch.float32 if worst_v < EXACT_F32 else torch.float64
                self.membrane[n.name] = (dt, reach > 2 ** (n.membrane_bits - 1) - 1)
                self.th[n.name] = torch.as_tensor(n.threshold, dtype=dt, device=device)
                self.v0[n.name] = (torch.as_tensor(n.v_init, dtype=dt, device=device)
                                   if n.v_init is not None else None)
        self.synop_nodes = sorted(spike_driven(graph)) if synops else []
        self.fanout = {k: torch.as_tensor(fanout(graph, graph[k]), dtype=torch.float64, device=device).reshape(-1)
                       for k in self.synop_nodes}
        self.largest = max(int(np.prod(n.shape)) for n in graph.nodes)


# Values flow between nodes over the whole window at once: evaluating node by node over all
# T steps is the same as step by step, since a feed-forward graph has no path from a later
# node back to an earlier one. A value is stored in one of four forms, so the analog input
# and what is computed from it alone cost one step, not T:
#   "full":  (T, N, *shape), one entry per step;
#   "const": (N, *shape), the same at every step (the every-step input);
#   "first": (N, *shape) at t = 0, zero after (the once input);
#   "counts": (N, *shape) an IF layer's counts alone, where nothing reads its spikes.

SKIP_CHECK_ELEMENTS = 2 ** 16


@dataclass
class _Val:
    stored: torch.Tensor | None  # the values (None while only ``codes`` hold them): see ``data``
    kind: str = "full"
    # Holds spike events or sums of them (small non-negative integers, float32): silent steps
    # are found by the maximum alone, and sums over the window are exact in float32.
    events: bool = False
    # (T,) bool where known: False marks a step known to be all zero (a linear map keeps it so)
    active: torch.Tensor | None = None
    # the sum over the window where already known, (N, *shape)
    window_sum: torch.Tensor | None = None
    # signed spikes (values -1, 0, 1) or maps of them; events is False for these
    signed: bool = False
    # spikes as uint8 codes (value + zero point, see spike_conv), in the layout of the
    # values, where they came so: convolutions take them as they are (int8 kernels)
    codes: torch.Tensor | None = None

    @property
    def data(self) -> torch.Tensor:
        """The values; spikes held only as codes are decoded on first use (a consumer that
        is not an int8 convolution)."""
        if self.stored is None:
            assert self.codes is not None
            self.stored = spike_conv.decode(self.codes, self.signed)
        return self.stored

    def full(self, T: int) -> torch.Tensor:
        if self.kind == "full":
            return self.data
        if self.kind == "counts":
            raise AssertionError("an IF layer simulated for its counts only has no spike trains")
        if self.kind == "const":
            return self.data.unsqueeze(0).expand((T,) + tuple(self.data.shape))
        out = torch.zeros((T,) + tuple(self.data.shape), dtype=self.data.dtype, device=self.data.device)
        out[0] = self.data
        return out

    def total(self, T: int, dtype: torch.dtype) -> torch.Tensor:
        """The sum over the window."""
        if self.window_sum is not None:
            return self.window_sum.to(dtype)
        if self.kind == "full":
            if self.events:
                return self.data.sum(dim=0).to(dtype)
            return self.data.sum(dim=0, dtype=dtype)
        return self.data.to(dtype) * (T if self.kind == "const" else 1)

    def map(self, fn, events: bool = False) -> "_Val":
        """A linear map without bias, applied at every step (zero steps stay zero); ``events``:
        the map keeps event sums event sums (pools, reshapes, padding), and it maps a known
        window sum too (a linear map of the sum is the sum of the maps, at 1/T the cost)."""
        y = self._map(fn, events and self.events)
        if events and self.window_sum is not None:
            y.window_sum = fn(self.window_sum)
        y.signed = events and self.signed
        return y

    def magnitude_total(self, T: int) -> torch.Tensor:
        """The sum over the window of |value|: the events of signed spikes (SynOps)."""
        x = self.full(T)
        if x.dtype == torch.float32 and len(x):
            # integers whose partial sums of magnitudes never exceed the total: exact in
            # float32 while the total stays below 2^24; step by step, so that no window-sized
            # copy is made (a fresh one costs its page faults)
            total, step = x[0].abs(), torch.empty_like(x[0])
            for t in range(1, len(x)):
                total.add_(torch.abs(x[t], out=step))
            if total.numel() == 0 or float(total.max()) < EXACT_F32:
                return total.to(torch.float64)
        return x.abs().sum(dim=0, dtype=torch.float64)

    def _map(self, fn, events: bool) -> "_Val":
        if self.kind != "full":
            return _Val(fn(self.data), self.kind, events)
        x = self.data
        k, n = x.shape[:2]
        if self.active is not None:
            active = self.active
            n_active = int(active.sum())
        elif x.numel() < SKIP_CHECK_ELEMENTS or x.requires_grad:
            # finding the silent steps would cost more; or a silent step's values are zero
            # but the gradients they carry are not
            n_active = k
        else:
            flat = x.reshape(k, -1)
            if self.events:
                active = flat.amax(dim=1) > 0
            else:
                lo, hi = torch.aminmax(flat, dim=1)
                active = (hi > 0) | (lo < 0)
            n_active = int(active.sum())
        if n_active == k:
            y = fn(x.reshape((k * n,) + tuple(x.shape[2:])))
            return _Val(y.reshape((k, n) + tuple(y.shape[1:])), events=events, active=self.active)
        xa = x[active] if n_active else x[:1]
        ya = fn(xa.reshape((xa.shape[0] * n,) + tuple(x.shape[2:])))
        ya = ya.reshape((xa.shape[0], n) + tuple(ya.shape[1:]))
        y = torch.zeros((k,) + tuple(ya.shape[1:]), dtype=ya.dtype, device=ya.device)
        if n_active:
            y[active] = ya
        return _Val(y, events=events, active=active)


def _as(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x if x.dtype == dtype else x.to(dtype)


def _wider(a: torch.dtype, b: torch.dtype) -> torch.dtype:
    """The wider float type: integer values narrow exactly where a bound allows it, but the
    gradients a traced value carries would lose precision."""
    return torch.float64 if torch.float64 in (a, b) else torch.float32


def _float32_parts(n: WeightedNode, in_bound: float) -> list[tuple[np.ndarray, float]] | None:
    """Split integer weights into signed base-2^s digits so that every digit's weighted sum
    stays below 2^24 (exact in float32); None where the input itself is not exact in float32
    or more than three digits would be needed."""
    if in_bound >= EXACT_F32:
        return None
    w = np.asarray(n.weight_int, np.int64)
    mag, sign = np.abs(w), np.sign(w)
    top = int(mag.max(initial=0)).bit_length()
    rows = int(np.prod(w.shape[1:]))
    for digits in (2, 3):
        s = -(-top // digits)
        if rows * (2 ** s - 1) * in_bound < EXACT_F32:
            mask = 2 ** s - 1
            return [(sign * ((mag >> (s * k)) & mask), float(2 ** (s * k))) for k in range(digits)]
    return None


def _exact_in_float32(n: WeightedNode, a: torch.Tensor, wmax: float) -> torch.Tensor:
    """Rows of an event input ``a`` (M, ...) whose weighted sums are exact in float32 whatever
    the order of summation: max|w| times the most events any one output sees stays below
    2^24. Worst-case bounds over all inputs put nodes in float64; actual spike inputs are
    sparse, so most rows pass and take one float32 product instead of several digit ones."""
    if isinstance(n, DenseNode):
        seen = a.sum(dim=1)
    else:
        pt, pl, pb, pr = n.padding
        per_position = F.pad(a.sum(dim=1, keepdim=True), (pl, pr, pt, pb))
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


def _int8_conv_codes(n: Conv2dNode, x: _Val, plan: _Plan, bias: torch.Tensor | None = None) -> torch.Tensor:
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


def _weighted(n: WeightedNode, x: _Val, plan: _Plan) -> _Val:
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
        ok = _exact_in_float32(n, a.abs() if x.signed else a, plan.wmax[n.name])
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
            y = x.map(lambda a: exact(_as(a, torch.float32), lambda r: r @ w32.T,
                                      lambda r: sum(torch.round(r @ p.T).to(dt) * f for p, f in parts)))
        else:
            y = x.map(lambda a: _as(a, dt) @ w.T)
    elif isinstance(n, Conv2dNode):
        pt, pl, pb, pr = n.padding

        # symmetric padding is the convolution's own (no padded copy of the input)
        inner = (pt, pl) if (pt, pl) == (pb, pr) else (0, 0)

        def conv(a: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
            if inner == (0, 0) and (pt or pl or pb or pr):
                a = F.pad(a, (pl, pr, pt, pb))
            y = F.conv2d(channels_last_strides(a), channels_last_strides(weight), None, n.stride, inner,
                         n.dilation, n.groups).round_()
            # the IF layer and pools after this node run on the current's layout
            return y.contiguous(memory_format=torch.channels_last)

        def by_parts(a: torch.Tensor) -> torch.Tensor:
            return sum(conv(a, p).to(dt) * f for p, f in parts)

        def layer(a: torch.Tensor) -> torch.Tensor:
            # channels-last: the layout oneDNN's CPU convolutions take without reordering
            a = _as(a, torch.float32 if parts else dt).contiguous(memory_format=torch.channels_last)
            if parts:
                return exact(a, lambda r: conv(r, plan.w32[n.name]), by_parts)
            return conv(a, w)
        if x.kind == "full" and x.codes is not None and n.name in plan.w8 and (pt, pl) == (pb, pr):
            if b is not None and n.bias_mode == "every_step":  # added in the kernel, not in a pass after
                return _Val(_int8_conv_codes(n, x, plan, b))
            y = _Val(_int8_conv_codes(n, x, plan), active=x.active)
        else:
            y = x.map(layer)
    else:  # AffineNode: per-channel multiplier
        y = x.map(lambda a: _as(a, dt) * w.reshape((1, -1) + (1,) * (a.dim() - 2)))
    if b is None:
        return y
    b = b.reshape((-1,) + (1,) * (len(n.shape) - 1))
    if n.bias_mode == "every_step":
        if y.kind == "first":
            y = _Val(y.full(T))
        return _Val(y.data.add_(b) if y.kind == "full" else y.data + b, y.kind)
    if y.kind == "first":
        return _Val(y.data + T * b, "first")
    data = y.full(T).clone()
    data[0] += T * b
    return _Val(data)


def _integrate_and_fire(n: IFNode, current: _Val, plan: _Plan, sat: dict[str, int],
                        counts_only: bool = False) -> _Val:
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


def _integrate_and_fire_fused(n: IFNode, current: _Val, plan: _Plan, sat: dict[str, int],
                              counts_only: bool = False) -> _Val:
    """The IF layer by the one-pass CPU kernel, on the current's own memory layout."""
    from .kernels.if_kernel import EVERY_STEP, FIRST_STEP, FULL, integrate_and_fire

    T = plan.T
    dt, may_saturate = plan.membrane[n.name]
    x = current.data if current.kind == "full" else current.data.unsqueeze(0)
    step_shape = tuple(x.shape[1:])
    x, order = _dense_order(_as(x, dt))
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
        return _Val(counts, "counts", events=not signed, window_sum=counts, signed=signed)
    spikes = torch.from_numpy(res.spikes).reshape((T,) + physical).permute(inverse)
    if spikes.dtype == torch.uint8:  # codes (for an int8 convolution reading this layer)
        return _Val(None, events=not signed, active=torch.from_numpy(res.active), window_sum=counts,
                    signed=signed, codes=spikes)
    return _Val(spikes, events=not signed, active=torch.from_numpy(res.active), window_sum=counts,
                signed=signed)


def _integrate_and_fire_steps(n: IFNode, current: _Val, plan: _Plan, sat: dict[str, int],
                              counts_only: bool = False) -> _Val:
    """The IF layer step by step with torch operations (any device)."""
    T = plan.T
    dt, may_saturate = plan.membrane[n.name]
    cur = _as(current.data, dt)
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
        return _Val(counts, "counts", events=not signed, window_sum=counts, signed=signed)
    return _Val(spikes, events=not signed, signed=signed)


def _max_pool_spikes(n: MaxPool2dNode, x: _Val, T: int) -> _Val:
    """A unit spikes when the running maximum of its inputs' running counts grows."""
    xs = x.full(T)
    # counts <= T: exact in float32; a traced value keeps its gradients' precision
    cum = torch.cumsum(xs, dim=0, dtype=_wider(xs.dtype, torch.float32))
    k, nb = cum.shape[:2]
    flat = _pool_pad(n, cum.reshape((k * nb,) + tuple(cum.shape[2:])))
    m = F.max_pool2d(flat, n.kernel, n.stride).reshape((k, nb) + tuple(n.shape))
    return _Val(torch.diff(m, dim=0, prepend=torch.zeros_like(m[:1])), events=True)


# A spike step: for an IF layer's step t, its normalized membrane ``u = v / threshold``
# (carrying gradients) and the spikes that fire (0/1, no gradients), the spikes to pass on,
# equal to them in value, with whatever gradient the caller gives them.
SpikeStep = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Traced:
    """What a run that carries gradients (:func:`run_window` with ``traced``) takes from its
    caller: per weighted node its integer weight and bias as tensors whose gradients reach
    the caller's parameters (:meth:`weights`), and per IF layer the function that gives its
    spikes a gradient at each step (:meth:`spike`); ``detach_spikes``: the spikes an IF
    layer passes on carry none (its counts still do). The integers are the simulator's."""

    weights: Callable[[WeightedNode], tuple[torch.Tensor, torch.Tensor | None]]
    spike: Callable[[IFNode], SpikeStep]
    detach_spikes: bool = False


def _round_straight_through(y: torch.Tensor) -> torch.Tensor:
    """Round to integers; a tensor that carries gradients keeps them (straight through)."""
    if not y.requires_grad:
        return torch.round(y)
    return torch.round(y.detach()) + (y - y.detach())


def _weighted_traced(n: WeightedNode, x: _Val, plan: _Plan, w: torch.Tensor,
                     b: torch.Tensor | None) -> _Val:
    """The weighted op with weights ``w`` and bias ``b`` that carry gradients: the values of
    :func:`_weighted`, computed over every step of the window in one plain layout (no
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
        flat = _pool_pad(n, xs.reshape((k * nb,) + tuple(xs.shape[2:])))
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
    return _Val(y)


def _integrate_and_fire_traced(n: IFNode, current: _Val, plan: _Plan, sat: dict[str, int],
                               traced: Traced) -> _Val:
    """The IF layer with spikes that carry gradients (``traced.spike``): the integers of
    :func:`_integrate_and_fire`, by out-of-place torch operations (autograd needs every
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
    step = traced.spike(n)
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
    return _Val(spikes.detach() if traced.detach_spikes else spikes, events=True, window_sum=counts)


def _pool_pad(n: Node, x: torch.Tensor) -> torch.Tensor:
    pt, pl, pb, pr = n.padding
    return F.pad(x, (pl, pr, pt, pb)) if (pt or pl or pb or pr) else x


def _sum_pool(n: AvgPool2dNode, x: torch.Tensor, dt: torch.dtype) -> torch.Tensor:
    """Integer sum over each window of (M, C, H, W), exact for the integer values it sums (the
    divisor is 1); channels-last, where the CPU pooling kernel is vectorised over channels
    (faster than summing strided slices of the window)."""
    x = _pool_pad(n, _as(x, _wider(x.dtype, dt))).contiguous(memory_format=torch.channels_last)
    return F.avg_pool2d(x, n.kernel, n.stride, divisor_override=1)


def _merge(ins: list[_Val], T: int) -> tuple[list[torch.Tensor], str]:
    """Inputs of an add or concat in one form and one dtype."""
    # a sum that carries gradients is formed in float64, where the gradients its inputs
    # receive from several consumers add up without rounding
    dt = (torch.float64 if any(i.data.dtype == torch.float64 or i.data.requires_grad for i in ins)
          else torch.float32)
    kinds = {i.kind for i in ins}
    kind = kinds.pop() if len(kinds) == 1 else "full"
    return [_as(i.data if kind != "full" else i.full(T), dt) for i in ins], kind


def _evaluate(n: Node, ins: list[_Val], plan: _Plan, sat: dict[str, int],
              counts_only: bool = False, traced: "Traced | None" = None) -> _Val:
    T = plan.T
    if isinstance(n, WeightedNode):
        if traced is not None:
            return _weighted_traced(n, ins[0], plan, *traced.weights(n))
        return _weighted(n, ins[0], plan)
    if isinstance(n, IFNode):
        if traced is not None:
            return _integrate_and_fire_traced(n, ins[0], plan, sat, traced)
        return _integrate_and_fire(n, ins[0], plan, sat, counts_only)
    if isinstance(n, MaxPool2dNode):
        return _max_pool_spikes(n, ins[0], T)
    x = ins[0]
    if isinstance(n, AvgPool2dNode):
        return x.map(lambda a: _sum_pool(n, a, plan.dtype[n.name]), events=True)
    if isinstance(n, (FlattenNode, ReshapeNode)):
        return x.map(lambda a: a.reshape((a.shape[0],) + tuple(n.shape)), events=True)
    if isinstance(n, AddNode):
        xs, kind = _merge(ins, T)
        out = xs[0]
        for i in xs[1:]:
            out = out + i
        return _Val(out, kind, signed=any(i.signed for i in ins))
    if isinstance(n, ConcatNode):
        xs, kind = _merge(ins, T)
        return _Val(torch.cat(xs, dim=n.axis + (2 if kind == "full" else 1)), kind,
                    signed=any(i.signed for i in ins))
    if isinstance(n, PadNode):
        r = len(n.shape)
        pads = []
        for axis in reversed(range(r)):
            pads += [n.pads[axis], n.pads[axis + r]]
        return x.map(lambda a: F.pad(a, pads), events=True)
    raise ModelError(f"node '{n.name}' ({n.op}) cannot be simulated in a spiking graph",
                     "convert the graph first ('snncompile convert')")


def _run_chunk(graph: Graph, plan: _Plan, xq: torch.Tensor, record: bool,
               nodes: set[str] | None = None, given: dict[str, "SpikeTrains"] | None = None,
               keep_spikes: set[str] = frozenset(), counts_dtype: torch.dtype = torch.float64,
               keep_codes: bool = False, traced: "Traced | None" = None) -> dict:
    """Simulate one chunk of samples over the whole window (``nodes``: only these, which
    must include their inputs, or be in ``given``; default all). ``given``: the spike
    trains of IF nodes, taken as they are instead of computed. ``keep_spikes``: IF nodes
    whose spike trains are returned as tensors. Counts and accumulators stay torch tensors.
    ``traced``: weighted ops and IF layers carry gradients (:class:`Traced`)."""
    T, nb = plan.T, xq.shape[0]
    given = given or {}
    order = [n for n in graph.nodes if nodes is None or n.name in nodes]
    left = {n.name: 0 for n in order}
    for n in order:
        for i in n.inputs if n.name not in given else ():
            left[i] += 1
    keep = set(graph.outputs)
    # IF layers whose spike trains nothing reads: their counts suffice
    counts_only = set() if record or traced is not None else ({n.name for n in order if isinstance(n, IFNode) and left[n.name] == 0}
                                        - keep - set(keep_spikes))
    val: dict[str, _Val] = {}
    totals: dict[str, torch.Tensor] = {}  # sums over the window, (N, elements) float64
    counts: dict[str, torch.Tensor] = {}
    spikes: dict[str, np.ndarray] = {}
    sat = {n.name: 0 for n in order if isinstance(n, IFNode)}
    syn = torch.zeros(nb, dtype=torch.float64, device=xq.device)
    syn_node: dict[str, np.ndarray] = {}
    kept: dict[str, torch.Tensor] = {}
    for n in order:
        if n.name in given:
            g = given[n.name]
            signed = getattr(n, "spikes", "binary") == "signed"
            out = _Val(g.spikes, events=not signed, active=g.active, window_sum=g.counts, signed=signed,
                       codes=g.codes)
        elif isinstance(n, InputNode):
            out = _Val(xq, "const") if n.mode == "every_step" else _Val(xq * T, "first")
        else:
            ins = [val[i] for i in n.inputs]
            if n.name in plan.fanout:  # SynOps: events times the synapses each one reaches
                tot = totals.get(n.inputs[0])
                if tot is None:
                    src = counts.get(n.inputs[0])
                    if ins[0].signed:  # every event counts, -1 as much as +1
                        tot = ins[0].magnitude_total(T)
                    else:
                        tot = src if src is not None else ins[0].total(T, torch.float64)
                    tot = totals[n.inputs[0]] = tot.reshape(nb, -1)
                events = tot @ plan.fanout[n.name]
                syn += events
                syn_node[n.name] = events.cpu().numpy()
            out = _evaluate(n, ins, plan, sat, n.name in counts_only, traced)
            for i in n.inputs:
                left[i] -= 1
                if left[i] == 0 and i not in keep:
                    del val[i]
        if isinstance(n, (IFNode, MaxPool2dNode)):
            # kept in the layer's own memory layout (a flat view would copy a channels-last
            # tensor); SynOps flatten it where a consumer counts them
            counts[n.name] = out.total(T, counts_dtype)
            if record:
                spikes[n.name] = out.data.to(torch.int8 if out.signed else torch.uint8).cpu().numpy()
            if n.name in keep_spikes:
                kept[n.name] = out.codes if keep_codes and out.codes is not None else out.full(T)
        val[n.name] = out
    acc = {o: val[o].total(T, torch.float64) for o in graph.outputs if o in val}
    return {"acc": acc, "counts": counts, "spikes": spikes, "synops": syn.cpu().numpy(), "sat": sat,
            "synops_by_node": syn_node, "kept": kept}


@dataclass
class SpikeTrains:
    """An IF layer's output handed to :func:`run_window` instead of computed: ``spikes``
    (T, N, *shape) float32 0/1 (-1/0/1 signed), their ``counts`` over the window (N,
    *shape), and ``active`` (T,) bool, False where a step holds no spike. ``codes``: the
    spikes as uint8 codes (:mod:`.kernels.spike_conv`), which may stand in for ``spikes`` (None):
    convolutions read them as they are, anything else decodes them."""

    spikes: torch.Tensor | None
    counts: torch.Tensor
    active: torch.Tensor
    codes: torch.Tensor | None = None


@dataclass
class WindowResult:
    """Integer results of one batch over the window, as float64 tensors on its device (the
    counts in the type :func:`run_window` was asked for)."""

    counts: dict[str, torch.Tensor]    # (N, *shape) spike counts of IF layers and max pools
    acc: dict[str, torch.Tensor]       # (N, *shape) output accumulators (sum over T)
    saturations: dict[str, int]
    # (T, N, *shape) float32 0/1 (-1/0/1 signed) if asked, or uint8 codes (spike_conv) where
    # asked for with keep_codes and the simulation made them
    spikes: dict[str, torch.Tensor] = field(default_factory=dict)


def run_window(graph: Graph, xq: torch.Tensor, timesteps: int,
               nodes: set[str] | None = None, given: dict[str, SpikeTrains] | None = None,
               keep_spikes: set[str] = frozenset(), counts_dtype: torch.dtype = torch.float64,
               keep_codes: bool = False, fused_if: bool | None = None, int8_conv: bool = True,
               traced: Traced | None = None) -> WindowResult:
    """The spike counts and output accumulators of integer inputs ``xq`` (N, *input shape,
    from :func:`quantize_input`), computed on ``xq``'s device in one batch, without SynOps:
    the integer forward of tuning loops, which run it on every batch and keep the tensors.
    ``nodes`` limits the work to these nodes (which must include their inputs, unless the
    node is ``given``: IF nodes whose spike trains are taken as they are, so the nodes
    feeding only them need not run); ``keep_spikes`` names IF nodes whose spike trains,
    (T, N, *shape) float32 0/1, the result keeps. ``counts_dtype``: the type of the counts
    (float32 holds any count up to 2^24 steps exactly and saves the tuning loops a
    conversion each way). ``keep_codes``: kept trains may come as uint8 codes, where the
    simulation wrote them so (a quarter of the bytes; :mod:`.kernels.spike_conv`).
    ``fused_if``, ``int8_conv``: as for :func:`simulate`. ``traced``: the same integers,
    with gradients through the weights and spikes it supplies (surrogate-gradient training);
    without it the run records no gradients."""
    T = int(timesteps)
    plan = _Plan(graph, T, xq.device, fused_if=_fused_if(graph, T, xq.shape[0], xq.device, fused_if),
                 synops=False, only=nodes, given=given or (), int8_conv=int8_conv, weights=traced is None)
    with torch.no_grad() if traced is None else contextlib.nullcontext():
        r = _run_chunk(graph, plan, xq.to(plan.dtype[graph.input.name]), False, nodes, given, keep_spikes,
                       counts_dtype, keep_codes, traced)
    return WindowResult(r["counts"], r["acc"], r["sat"], r["kept"])


# Largest (T x samples x neurons) tensor one chunk may hold: bounds memory on big models, and
# tensors that stay near the CPU caches are faster to sweep step by step.
CHUNK_ELEMENTS = 2 ** 22

# The same bound for the no-grad passes of tuning over a whole data set (its validation
# scores and the spike trains a PTL stage keeps), which run the window on a batch of samples
# and keep nothing but counts: on a CNN's early layers a fixed batch of samples makes window
# tensors so large that the allocator maps them afresh (a page fault on every touch) and the
# int8 convolutions sweep them slower than smaller maps, so the batch shrinks with the
# largest node.
WINDOW_BATCH_ELEMENTS = 2 ** 23


def window_batch(graph: Graph, timesteps: int, most: int = 256) -> int:
    """Samples per batch for whole-window passes over a data set: at most ``most``, and so
    that a (T, samples, neurons) tensor of the graph's largest node stays within
    :data:`WINDOW_BATCH_ELEMENTS`."""
    largest = max(int(np.prod(n.shape)) for n in graph.nodes)
    return max(1, min(int(most), WINDOW_BATCH_ELEMENTS // (max(int(timesteps), 1) * max(largest, 1))))


# On the CPU, IF layers run in the one-pass kernel of if_kernel.py where that pays: its
# one-time start in a process (importing numba and loading the cached compiled kernel)
# outweighs the torch formulation's extra passes on runs below this many neuron-steps.
# Callers that run the window again and again (the tuning loops) ask for the kernel
# outright, since they pay its start once. Both formulations give the same bits.
FUSED_IF_MIN_NEURON_STEPS = 2 ** 27


def _fused_if(graph: Graph, timesteps: int, samples: int, device: torch.device,
              requested: bool | None = None) -> bool:
    """Whether IF layers run in the one-pass kernel: never off the CPU; else as
    ``requested``, or (None) where the run is large enough to pay the kernel's start."""
    if device.type != "cpu":
        return False
    if requested is not None:
        return bool(requested)
    neurons = sum(int(np.prod(n.shape)) for n in graph.nodes if isinstance(n, IFNode))
    return neurons * timesteps * samples >= FUSED_IF_MIN_NEURON_STEPS


def simulate(graph: Graph, x: np.ndarray, timesteps: int | None = None, batch_size: int = 256,
             record_spikes: bool = False, progress: bool = False,
             device: str | torch.device = "cpu", fused_if: bool | None = None,
             int8_conv: bool = True) -> SimResult:
    """Run the SNN graph on float inputs ``x`` (N, *input shape) for T steps.

    ``timesteps`` overrides the graph's T (thresholds are independent of T, so the same
    network can be run for any window). ``record_spikes`` keeps every spike (memory T x N x
    neurons: for tests and conformance checks). Samples are simulated ``batch_size`` at a
    time, fewer where a chunk's tensors over the whole window would be too large.

    ``fused_if``: whether IF layers run in the one-pass CPU kernel (:mod:`.kernels.if_kernel`)
    rather than in torch operations; None chooses from the size of the run. ``int8_conv``:
    whether convolutions of spike codes may run on int8 kernels where this process has them
    (:mod:`.kernels.spike_conv`). Neither changes a result, only its speed."""
    T = int(timesteps or graph.timesteps or 0)
    if T < 1:
        raise ModelError("the number of time steps must be at least 1")
    x = np.asarray(x)
    if x.ndim < 1 or tuple(x.shape[1:]) != tuple(graph.input.shape):
        raise DataError(f"input shape {tuple(x.shape[1:])} per sample does not match the model's "
                        f"{tuple(graph.input.shape)}")
    dev = torch.device(device)
    plan = _Plan(graph, T, dev, fused_if=_fused_if(graph, T, x.shape[0], dev, fused_if), int8_conv=int8_conv)
    xq_all = quantize_input(graph, x)
    n_total = x.shape[0]
    chunk = max(1, min(int(batch_size), CHUNK_ELEMENTS // (T * plan.largest)))
    spike_nodes = [n.name for n in graph.nodes if isinstance(n, (IFNode, MaxPool2dNode))]
    parts = []
    bar = _progress(progress, n_total)
    with torch.no_grad():
        for start in range(0, n_total, chunk):
            xb = torch.as_tensor(xq_all[start:start + chunk], device=dev)
            parts.append(_run_chunk(graph, plan, xb.to(plan.dtype[graph.input.name]), record_spikes))
            if bar is not None:
                bar.update(xb.shape[0])
    if bar is not None:
        bar.close()
    acc = {k: np.concatenate([p["acc"][k].cpu().numpy() for p in parts]) for k in graph.outputs}
    outputs = {}
    for k, a in acc.items():
        scale = graph[k].out_scale
        outputs[k] = (a * (scale if scale is not None else 1.0) / T).astype(np.float32)
    counts = {k: np.concatenate([p["counts"][k].to(torch.int32).cpu().numpy() for p in parts])
              for k in spike_nodes}
    spikes = ({k: np.concatenate([p["spikes"][k] for p in parts], axis=1) for k in spike_nodes}
              if record_spikes else None)
    sat = {k: sum(p["sat"][k] for p in parts) for k in parts[0]["sat"]} if parts else {}
    return SimResult(outputs=outputs, output_acc={k: np.rint(a).astype(np.int64) for k, a in acc.items()},
                     spike_counts=counts, synops=np.concatenate([p["synops"] for p in parts]),
                     timesteps=T, saturations=sat, spikes=spikes,
                     synops_by_node={k: np.concatenate([p["synops_by_node"][k] for p in parts])
                                     for k in plan.synop_nodes} if parts else {})


def _progress(enabled: bool, total: int):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc="simulating", unit="sample", leave=False)
