"""The evaluator: a graph's integer values computed node by node over the whole window.

Evaluating every node over all T steps at once (one convolution over T x N samples instead
of T convolutions over N) equals stepping the graph, because a feed-forward graph has no
path from a later node back to an earlier one; tests/test_simulator_orders.py checks the
two orders against each other bit for bit. :func:`run_window` is the integer forward of the
tuning loops, and with ``traced`` that of surrogate-gradient training.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import ModelError
from ..ir.structure import ancestors
from ..ir import (AddNode, AvgPool2dNode, ConcatNode, FlattenNode, Graph, IFNode, InputNode,
                  MaxPool2dNode, Node, PadNode, ReshapeNode, WeightedNode)
from .kernels import spike_conv
from .neurons import SpikeStep, integrate_and_fire, integrate_and_fire_traced, max_pool_spikes, sum_pool
from .padding import pad_axes
from .plan import Plan, use_fused_if
from .values import Value, as_dtype
from .weighted import weighted, weighted_traced


def needed(graph: Graph, targets: list[str]) -> set[str]:
    """The names of ``targets`` and all their ancestors: the ``nodes`` a run that computes
    ``targets`` needs (:func:`run_window`)."""
    return ancestors(graph, targets)


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


def _merge(ins: list[Value], T: int) -> tuple[list[torch.Tensor], str]:
    """Inputs of an add or concat in one form and one dtype."""
    # a sum that carries gradients is formed in float64, where the gradients its inputs
    # receive from several consumers add up without rounding
    dt = (torch.float64 if any(i.data.dtype == torch.float64 or i.data.requires_grad for i in ins)
          else torch.float32)
    kinds = {i.kind for i in ins}
    kind = kinds.pop() if len(kinds) == 1 else "full"
    return [as_dtype(i.data if kind != "full" else i.full(T), dt) for i in ins], kind


def _evaluate(n: Node, ins: list[Value], plan: Plan, sat: dict[str, int],
              counts_only: bool = False, traced: Traced | None = None) -> Value:
    T = plan.T
    if isinstance(n, WeightedNode):
        if traced is not None:
            return weighted_traced(n, ins[0], plan, *traced.weights(n))
        return weighted(n, ins[0], plan)
    if isinstance(n, IFNode):
        if traced is not None:
            return integrate_and_fire_traced(n, ins[0], plan, sat, traced.spike(n), traced.detach_spikes)
        return integrate_and_fire(n, ins[0], plan, sat, counts_only)
    if isinstance(n, MaxPool2dNode):
        return max_pool_spikes(n, ins[0], T)
    x = ins[0]
    if isinstance(n, AvgPool2dNode):
        return x.map(lambda a: sum_pool(n, a, plan.dtype[n.name]), events=True)
    if isinstance(n, (FlattenNode, ReshapeNode)):
        return x.map(lambda a: a.reshape((a.shape[0],) + tuple(n.shape)), events=True)
    if isinstance(n, AddNode):
        xs, kind = _merge(ins, T)
        out = xs[0]
        for i in xs[1:]:
            out = out + i
        return Value(out, kind, signed=any(i.signed for i in ins))
    if isinstance(n, ConcatNode):
        xs, kind = _merge(ins, T)
        return Value(torch.cat(xs, dim=n.axis + (2 if kind == "full" else 1)), kind,
                    signed=any(i.signed for i in ins))
    if isinstance(n, PadNode):
        return x.map(lambda a: pad_axes(a, n.pads), events=True)
    raise ModelError(f"node '{n.name}' ({n.op}) cannot be simulated in a spiking graph",
                     "convert the graph first ('snncompile convert')")


def run_chunk(graph: Graph, plan: Plan, xq: torch.Tensor, record: bool,
               nodes: set[str] | None = None, given: dict[str, "SpikeTrains"] | None = None,
               keep_spikes: set[str] = frozenset(), counts_dtype: torch.dtype = torch.float64,
               keep_codes: bool = False, traced: Traced | None = None) -> dict:
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
    val: dict[str, Value] = {}
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
            out = Value(g.spikes, events=not signed, active=g.active, window_sum=g.counts, signed=signed,
                       codes=g.codes)
        elif isinstance(n, InputNode):
            out = Value(xq, "const") if n.mode == "every_step" else Value(xq * T, "first")
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


def trains_as_codes(spikes: torch.Tensor, signed: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Spike trains a run kept, (T, N, *shape) float spikes or uint8 codes, as what
    :class:`SpikeTrains` takes to hand them to later runs codes only: the codes (maps
    channels-last per step, the layout the int8 convolutions read without a copy), their
    counts over the window (int16 where T allows, else int32; a quarter of float32 or less)
    and the active steps."""
    codes = spikes if spikes.dtype == torch.uint8 else spike_conv.encode(spikes, signed)
    if codes.dim() == 5:
        codes = codes.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    zero, T = spike_conv.zero_point(signed), int(codes.shape[0])
    counts = codes.sum(0, dtype=torch.int32) - zero * T
    return codes, counts.to(torch.int16 if T < 2 ** 15 else torch.int32), codes.flatten(1).ne(zero).any(1)


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
    plan = Plan(graph, T, xq.device, fused_if=use_fused_if(graph, T, xq.shape[0], xq.device, fused_if),
                 synops=False, only=nodes, given=given or (), int8_conv=int8_conv, weights=traced is None)
    with torch.no_grad() if traced is None else contextlib.nullcontext():
        r = run_chunk(graph, plan, xq.to(plan.dtype[graph.input.name]), False, nodes, given, keep_spikes,
                       counts_dtype, keep_codes, traced)
    return WindowResult(r["counts"], r["acc"], r["sat"], r["kept"])


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
