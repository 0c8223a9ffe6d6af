"""The exact integer forward of a converted graph, computed layer by layer over the window.

The reference simulator (:mod:`snncompile.sim.simulator`) steps every node once per time step.
Without feedback, the same integers come out when each node instead processes all T steps
at once, in graph order: weighted ops run on a (T * N, ...) batch, and only IF layers and
spiking max pools loop over t (their state carries from step to step). That is much faster
for training, and it is checked bit for bit against the simulator in tests/test_tandem.py.
Arithmetic follows the simulator's rules: integers held exactly in float32 where a bound
shows every partial sum stays below 2^24, else float64; convolution results rounded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import ModelError
from ..ir import (AddNode, AffineNode, AvgPool2dNode, ConcatNode, Conv2dNode, DenseNode, FlattenNode,
                  Graph, IFNode, InputNode, MaxPool2dNode, PadNode, ReshapeNode, WeightedNode)
from ..sim.simulator import EXACT_F32, EXACT_F64, quantize_input, value_bounds


@dataclass
class IntResult:
    """Per computed node: ``steps`` (T, N, *shape) integer values per step (float tensors);
    ``counts`` spike counts of IF layers and max pools; ``acc`` output accumulators."""

    steps: dict[str, torch.Tensor] = field(default_factory=dict)
    counts: dict[str, torch.Tensor] = field(default_factory=dict)
    acc: dict[str, torch.Tensor] = field(default_factory=dict)
    saturations: dict[str, int] = field(default_factory=dict)


def needed(graph: Graph, targets: list[str]) -> set[str]:
    """The names of ``targets`` and all their ancestors."""
    want: set[str] = set()
    stack = list(targets)
    while stack:
        k = stack.pop()
        if k not in want:
            want.add(k)
            stack.extend(graph[k].inputs)
    return want


def dtypes(graph: Graph, timesteps: int) -> dict[str, torch.dtype]:
    """Per node, a float type that holds its values (and partial sums) exactly."""
    bounds = value_bounds(graph, timesteps)
    worst = max(bounds.values())
    if worst >= EXACT_F64:
        raise ModelError(f"integer values can reach {worst:.3g}, beyond exact arithmetic (2^53)",
                         "use fewer weight bits or a smaller --timesteps")
    return {k: torch.float32 if v < EXACT_F32 else torch.float64 for k, v in bounds.items()}


def quantized_input(graph: Graph, x: torch.Tensor) -> torch.Tensor:
    """Integer input levels (as float64) of float inputs, exactly as the simulator takes them."""
    return torch.as_tensor(quantize_input(graph, x.detach().cpu().numpy()), device=x.device)


def run_integer(graph: Graph, xq: torch.Tensor, timesteps: int, nodes: set[str] | None = None,
                types: dict[str, torch.dtype] | None = None,
                weighted: Callable[[WeightedNode, torch.Tensor, int, torch.dtype], torch.Tensor] | None = None,
                spiking: Callable[[IFNode, torch.Tensor, IntResult], torch.Tensor] | None = None) -> IntResult:
    """Integer values of ``nodes`` (default: all) for integer inputs ``xq`` (N, *shape).

    ``weighted`` and ``spiking`` replace the weighted ops and the IF layers (same arguments
    as :func:`_weighted` and :func:`_if_layer`): surrogate-gradient training
    (:mod:`.bptt`) runs the same integers with differentiable weights and spikes."""
    T = int(timesteps)
    weighted = weighted or _weighted
    spiking = spiking or _if_layer
    todo = nodes if nodes is not None else {n.name for n in graph.nodes}
    types = types or dtypes(graph, T)
    res = IntResult()
    val = res.steps
    for n in graph.nodes:
        if n.name not in todo:
            continue
        if isinstance(n, InputNode):
            x = xq.to(torch.float64)
            if n.mode == "every_step":
                val[n.name] = x.unsqueeze(0).expand((T,) + tuple(x.shape))
            else:
                v = torch.zeros((T,) + tuple(x.shape), dtype=torch.float64, device=x.device)
                v[0] = x * T
                val[n.name] = v
            continue
        ins = [val[i] for i in n.inputs]
        if isinstance(n, WeightedNode):
            out = weighted(n, ins[0], T, types[n.name])
        elif isinstance(n, IFNode):
            out = spiking(n, ins[0], res)
        elif isinstance(n, MaxPool2dNode):
            out = _maxpool(n, ins[0], res)
        elif isinstance(n, AvgPool2dNode):
            x = _flat(ins[0])
            pt, pl, pb, pr = n.padding
            if pt or pl or pb or pr:
                x = F.pad(x, (pl, pr, pt, pb))
            out = _unflat(F.avg_pool2d(x, n.kernel, n.stride, divisor_override=1), T)
        elif isinstance(n, FlattenNode):
            out = ins[0].reshape(ins[0].shape[0], ins[0].shape[1], -1)
        elif isinstance(n, ReshapeNode):
            out = ins[0].reshape(tuple(ins[0].shape[:2]) + tuple(n.target))
        elif isinstance(n, AddNode):
            out = ins[0].to(torch.float64)
            for i in ins[1:]:
                out = out + i.to(torch.float64)
        elif isinstance(n, ConcatNode):
            out = torch.cat([i.to(torch.float64) for i in ins], dim=n.axis + 2)
        elif isinstance(n, PadNode):
            k = len(n.shape)
            pads: list[int] = []
            for axis in reversed(range(k)):
                pads += [n.pads[axis], n.pads[axis + k]]
            out = F.pad(ins[0], pads)
        else:
            raise ModelError(f"node '{n.name}' ({n.op}) has no integer forward",
                             "convert the graph first ('snncompile convert')")
        val[n.name] = out
    for o in graph.outputs:
        if o in val:
            res.acc[o] = val[o].to(torch.float64).sum(dim=0)
    return res


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape((x.shape[0] * x.shape[1],) + tuple(x.shape[2:]))


def _unflat(y: torch.Tensor, T: int) -> torch.Tensor:
    return y.reshape((T, y.shape[0] // T) + tuple(y.shape[1:]))


def _round(y: torch.Tensor) -> torch.Tensor:
    """Round to integers; a tensor that carries gradients keeps them (straight through)."""
    if not y.requires_grad:
        return torch.round(y)
    return torch.round(y.detach()) + (y - y.detach())


def _weighted(n: WeightedNode, x: torch.Tensor, T: int, dt: torch.dtype,
              w: torch.Tensor | None = None, b: torch.Tensor | None = None) -> torch.Tensor:
    """The op's integer output per step; ``w``/``b`` (integer-valued tensors, possibly
    carrying gradients) stand in for the node's ``weight_int``/``bias_int``."""
    w = torch.as_tensor(n.weight_int, dtype=dt, device=x.device) if w is None else w.to(dt)
    xs = x.to(dt)
    if isinstance(n, DenseNode):
        y = _round(xs @ w.T)
        per_c: tuple[int, ...] = ()
    elif isinstance(n, Conv2dNode):
        xf = _flat(xs)
        pt, pl, pb, pr = n.padding
        if pt or pl or pb or pr:
            xf = F.pad(xf, (pl, pr, pt, pb))
        y = _unflat(_round(F.conv2d(xf, w, None, n.stride, 0, n.dilation, n.groups)), T)
        per_c = (1, 1)
    elif isinstance(n, AffineNode):
        per_c = (1,) * (xs.dim() - 3)
        y = xs * w.reshape((-1,) + per_c)
    else:
        raise ModelError(f"node '{n.name}' ({n.op}) has no integer forward")
    if n.bias_int is not None:
        b = torch.as_tensor(n.bias_int, dtype=dt, device=x.device) if b is None else b.to(dt)
        b = b.reshape((-1,) + per_c)
        if n.bias_mode == "every_step":
            y = y + b
        else:
            y = y.clone()
            y[0] = y[0] + T * b
    return y


def _if_layer(n: IFNode, cur: torch.Tensor, res: IntResult) -> torch.Tensor:
    """Integrate-and-fire over the window, step by step (the state carries).

    When a bound shows the membrane cannot reach the membrane width (|v| never exceeds
    |v_init| + sum_t |cur_t| with positive thresholds, since a subtract or zero reset only
    brings v closer to 0), the per-step saturation check is skipped; when that bound and
    the thresholds stay below 2^24 the loop runs in float32, which holds every value exactly.
    Both only save time: the integers are the same."""
    T = cur.shape[0]
    dev = cur.device
    th = torch.as_tensor(n.threshold, dtype=torch.float64, device=dev)
    v0 = torch.as_tensor(n.v_init if n.v_init is not None else 0.0, dtype=torch.float64, device=dev)
    lim = float(2 ** (n.membrane_bits - 1) - 1)
    bound = float(v0.abs().max()) + float(cur.abs().sum(dim=0).max()) if cur.numel() else 0.0
    check = not (bound <= lim and bool((th > 0).all()))
    dt = torch.float32 if (bound < EXACT_F32 and float(th.abs().max()) < EXACT_F32) else torch.float64
    th, cur = th.to(dt), cur.to(dt)
    v = torch.zeros(tuple(cur.shape[1:]), dtype=dt, device=dev) + v0.to(dt)
    spikes = torch.empty((T,) + tuple(cur.shape[1:]), dtype=dt, device=dev)
    sat = 0
    net = torch.zeros_like(v) if n.spikes == "signed" else None  # signed: the count so far
    for t in range(T):
        v = v + cur[t]
        if check:
            over = v.abs() > lim
            if bool(over.any()):
                sat += int(over.sum())
                v = v.clamp(-lim, lim)
        s = (v >= th).to(dt)
        if net is not None:  # -1 below 0 once the net count is above 0 (IFNode.spikes)
            s = s - ((v < 0) & (net > 0)).to(dt)
            net = net + s
        v = v - s * th if n.reset == "subtract" else v * (1.0 - s)
        spikes[t] = s
    res.counts[n.name] = spikes.sum(dim=0)
    res.saturations[n.name] = sat
    return spikes


def _maxpool(n: MaxPool2dNode, x: torch.Tensor, res: IntResult) -> torch.Tensor:
    pt, pl, pb, pr = n.padding
    cum = torch.cumsum(x.to(torch.float64), dim=0)
    cf = _flat(cum)
    if pt or pl or pb or pr:
        cf = F.pad(cf, (pl, pr, pt, pb))
    m = _unflat(F.max_pool2d(cf, n.kernel, n.stride), x.shape[0])
    out = torch.diff(m, dim=0, prepend=torch.zeros_like(m[:1]))
    res.counts[n.name] = m[-1]
    return out
