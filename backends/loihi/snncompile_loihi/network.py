"""The Loihi network: an snncompile IR regrouped into what Lava runs.

Lava connects *neuron populations* through *connection processes*; the IR has many small
linear ops between its populations (conv, dense, affine, sum pools, flatten, reshape, pad,
concat, add). :func:`build_network` takes every chain of linear ops between two populations
as the one exact integer matrix the core composes for it
(:func:`snncompile.plugin.flatten_network`), so each (source population, target) pair
becomes one Dense connection, or a Conv where the chain is one convolution Lava's Conv
process takes (or an identity skip, a 1x1 depthwise kernel of ones): a Conv is kept at any
size and never built as a dense matrix, which only Dense fallbacks are (up to 2^24 entries). Folding a sum pool into the following weighted layer keeps its weights unchanged
when the pool windows do not overlap (each input element lands in one window), so the
weights stay 8-bit; an overlapping pool or two weighted ops in a row can widen them, which
:mod:`snncompile_loihi.rules` reports.

Branches of different depths may join (a residual skip): every connection delays by one
step, so the shorter branch's connection gets the missing steps as synaptic delay (Lava's
DelayDense, or a delayed LoihiConv, up to 63 steps).

Anything that cannot be folded exactly is recorded in ``Network.problems`` (as violations)
instead of raising, so ``check`` can report every problem at once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from snncompile.ir import (AddNode, AffineNode, AvgPool2dNode, ConcatNode, Conv2dNode, DenseNode,
                           FlattenNode, Graph, IFNode, InputNode, MaxPool2dNode, Node, PadNode,
                           ReshapeNode, WeightedNode)
from snncompile.plugin import FlatNetwork, Violation, chain_ops, flatten_network, synapse_chains

from . import limits as L
from .encode import DoesNotFit, bias_fits_neuron, delay_code

LINEAR_OPS = (Conv2dNode, DenseNode, AffineNode, AvgPool2dNode, FlattenNode, ReshapeNode, PadNode,
              ConcatNode, AddNode)
MAX_DENSE_ENTRIES = 2 ** 24   # largest folded Dense matrix this lowering builds (memory bound)


@dataclass
class IntFireLayer:
    """A layer of IntFire neurons (an IR IF node) with the current that feeds it."""

    name: str
    shape: tuple[int, ...]
    depth: int                      # connections between the input and this layer
    theta: np.ndarray               # (size,) integer thresholds
    v_init: np.ndarray              # (size,) initial membrane
    bias: np.ndarray                # (size,) per-step bias (or the per-step unit of first_step)
    bias_first_step: bool
    reset: str
    membrane_bits: int
    spikes: str = "binary"          # "signed": SignedIntFire, +1/-1 as graded spikes

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


@dataclass
class Connection:
    """One connection. ``dense``: ``weight`` (dst size, src size) integers. ``conv``: one
    IR convolution kept as such (weight (Cout, Cin/groups, kH, kW) in the IR's layout, from
    a (C, H, W) source), lowered to Lava's Conv process with symmetric padding."""

    name: str
    src: str
    dst: str
    weight: np.ndarray
    ir_weight_max: int = 0          # largest |mantissa| of the IR weighted ops folded into it
    kind: str = "dense"
    delay: int = 0                  # extra steps of synaptic delay (DelayDense or LoihiConv)
    in_shape: tuple[int, ...] = ()
    out_shape: tuple[int, ...] = ()
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)   # (rows, columns), each applied on both sides
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    part: int = 0                   # which accumulator of a split output it feeds (split_outputs)

    @property
    def synapses(self) -> int:
        """Non-zero synapses (for a conv: an estimate, kernel taps times output positions)."""
        if self.kind == "conv":
            return int(np.count_nonzero(self.weight)) * int(np.prod(self.out_shape[1:]))
        return int(np.count_nonzero(self.weight))


@dataclass
class Output:
    """A non-spiking output: the current of an IR output node, accumulated over the window."""

    name: str
    shape: tuple[int, ...]
    depth: int
    bias: np.ndarray                # (size,) per-step bias; the window adds T times it
    parts: int = 1                  # accumulators whose sum it is (split_outputs)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


@dataclass
class BiasSource:
    """A bias too wide for the neuron's 13-bit mantissa, delivered exactly as graded spikes:
    the per-step charge ``c`` (``bias``, or ``T * bias`` on the first step of each window for
    ``first_step``) is split into balanced base-128 digits (each in -64..63); ``K`` constant
    channels with payloads ``128^k`` reach the layer through 8-bit weights holding the digits,
    so ``digits @ payload == c`` (see :func:`bias_digits`; the runner splits with the run's T)."""

    name: str
    dst: str
    depth: int
    bias: np.ndarray
    first_step: bool

    def charge(self, timesteps: int) -> np.ndarray:
        return self.bias * (timesteps if self.first_step else 1)


def bias_digits(bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Balanced base-128 digits of integer ``bias`` (size,): (digits (size, K), 128^k)."""
    rest = np.asarray(bias, np.int64).copy()
    digits = []
    while np.any(rest) or not digits:
        d = (rest + 64) % 128 - 64
        digits.append(d)
        rest = (rest - d) // 128
    return np.stack(digits, axis=1), 128 ** np.arange(len(digits), dtype=np.int64)


@dataclass
class MaxPoolLayer:
    """A spike-count max pool (an IR maxpool2d on spikes), lowered to ``SpikeMaxPool``:
    ``channels * slots * positions`` counter compartments in (channel, window slot,
    position) order, one synapse each, and ``channels * positions`` pool units (the IR's
    (C, H, W) order). Counters and running maxima are ``count_bits`` wide."""

    name: str
    shape: tuple[int, ...]
    depth: int
    slots: int
    count_bits: int

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def compartments(self) -> int:
        return self.size * self.slots


@dataclass
class Network:
    """What the artifact holds: the input, populations, connections and outputs."""

    input_name: str
    input_shape: tuple[int, ...]
    input_mode: str
    input_bits: int
    timesteps: int
    populations: list[IntFireLayer] = field(default_factory=list)
    connections: list[Connection] = field(default_factory=list)
    outputs: list[Output] = field(default_factory=list)
    bias_sources: list[BiasSource] = field(default_factory=list)
    problems: list[Violation] = field(default_factory=list)
    pools: list[MaxPoolLayer] = field(default_factory=list)

    def incoming(self, name: str) -> list[Connection]:
        return [c for c in self.connections if c.dst == name]


def _per_neuron(a: np.ndarray | None, shape: tuple[int, ...], default: int = 0) -> np.ndarray:
    """An IR array broadcastable to ``shape`` (as the IR stores thresholds and initial
    membranes), one value per neuron, flattened in row-major order."""
    if a is None:
        return np.full(int(np.prod(shape)), default, np.int64)
    return np.rint(np.broadcast_to(np.asarray(a), shape).reshape(-1)).astype(np.int64)


def _bias(flat: FlatNetwork, name: str) -> tuple[np.ndarray, bool, set[str]]:
    """The per-step bias into ``name`` (or the per-step unit of a first-step one), whether it
    is a first-step one, and the bias modes its synapse chains carry."""
    every, first = flat.bias_every[name], flat.bias_first[name]
    modes = {m for m, b in (("every_step", every), ("first_step", first)) if np.any(b)}
    return (first if modes == {"first_step"} else every), modes == {"first_step"}, modes


def build_network(graph: Graph, timesteps: int | None = None,
                  flat: FlatNetwork | None = None, count_bits: int = 24) -> Network:
    """Regroup ``graph`` into populations and connections: one per (source population,
    layer) pair, holding the integer matrix of the synapse chain between them as the core
    composes it (``flat``, :func:`snncompile.plugin.flatten_network` of ``graph`` when not
    given), or the convolution itself where Lava's Conv process takes it. Max pools get
    ``count_bits``-wide counters (:func:`_add_max_pool`)."""
    flat = flat if flat is not None else flatten_network(graph)
    inp = graph.input
    net = Network(inp.name, tuple(inp.shape), inp.mode, inp.bits, int(timesteps or graph.timesteps or 1))
    depth: dict[str, int] = {inp.name: 0}
    outputs = set(graph.outputs)
    order = {n.name: k for k, n in enumerate(graph.nodes)}
    for node in graph.nodes:
        if isinstance(node, (InputNode,) + LINEAR_OPS) and node.name not in outputs:
            continue
        if isinstance(node, MaxPool2dNode):
            _add_max_pool(net, graph, flat, node, depth, count_bits)
            continue
        if not isinstance(node, IFNode) and node.name not in outputs:
            net.problems.append(Violation(node.name, f"operation '{node.op}'", "not supported", "dense, conv, "
                                          "affine, sum pool, reshape, pad, concat, add and IF layers",
                                          _fix_for(node)))
            continue
        if isinstance(node, IFNode):
            current = node.inputs[0]
            if not isinstance(graph[current], LINEAR_OPS):
                net.problems.append(Violation(node.name, "input of an IF layer", graph[current].op,
                                              "a weighted layer", "put a dense/conv layer before it"))
                continue
        elif not isinstance(node, LINEAR_OPS):
            net.problems.append(Violation(node.name, "output kind", node.op, "a weighted layer "
                                          "(non-spiking accumulator)", "end the model with a linear layer"))
            continue
        incoming = sorted(flat.into(node.name), key=lambda p: order[p.source])
        if any(p.source not in depth for p in incoming):  # fed by something unsupported (already reported)
            continue
        d = max((depth[p.source] for p in incoming), default=0) + 1
        depth[node.name] = d
        size = int(np.prod(node.shape))
        ir_max = max((int(np.abs(n.weight_int).max(initial=0)) >> int(n.weight_exp or 0)
                      for n in chain_ops(graph, node.name) if isinstance(n, WeightedNode)), default=0)
        for proj in incoming:
            s = proj.source
            delay = d - 1 - depth[s]  # extra steps that align a shorter branch (a skip)
            try:
                delay_code(delay)  # what the emitter writes
            except DoesNotFit as e:
                net.problems.append(Violation(node.name, f"synaptic delay from '{s}' (steps)", e.value,
                                              e.limit, "a shorter skip connection"))
            conv = _as_conv(graph, node, s, delay)
            if conv is not None:
                net.connections.append(conv)
                continue
            n_src = int(np.prod(graph[s].shape))
            if n_src * size > MAX_DENSE_ENTRIES:
                net.problems.append(Violation(node.name, f"folded dense connection from '{s}' (entries)",
                                              n_src * size, MAX_DENSE_ENTRIES,
                                              "feed the layer by one convolution per source (Lava's Conv "
                                              "takes it at any size) or use a smaller layer"))
                continue
            net.connections.append(Connection(f"{s}->{node.name}", s, node.name,
                                              proj.matrix.toarray(), ir_max, delay=delay))
        bias, first_step, modes = _bias(flat, node.name)
        if len(modes) > 1:
            net.problems.append(Violation(node.name, "bias modes in its synapse chain", "/".join(sorted(modes)),
                                          "one mode", "convert with one --input-mode"))
        if isinstance(node, IFNode) and not bias_fits_neuron(bias):
            net.bias_sources.append(BiasSource(f"bias->{node.name}", node.name, d, bias, first_step))
            bias = np.zeros_like(bias)
        if isinstance(node, IFNode):
            net.populations.append(IntFireLayer(
                node.name, tuple(node.shape), d, _per_neuron(node.threshold, node.shape),
                _per_neuron(node.v_init, node.shape), bias, first_step, node.reset,
                node.membrane_bits, node.spikes))
        else:
            net.outputs.append(Output(node.name, tuple(node.shape), d, bias))
    split_outputs(net)
    return net


def split_outputs(net: Network, port_max: int = L.CURRENT_MAX) -> None:
    """Split each output whose spikes could bring more than ``port_max`` in one step (a
    global pool folded into the classifier: 16 positions x the weights) into accumulators
    that each receive at most that, summed by the host that reads them. Only outputs fed by
    dense connections from spiking populations are split (a spike, +1 or -1, brings at most
    |w|); the source columns are dealt greedily, in order, to the accumulators."""
    for o in net.outputs:
        inc = net.incoming(o.name)
        if not inc or any(c.kind != "dense" or c.src == net.input_name for c in inc):
            continue
        if int(sum(np.abs(np.asarray(c.weight, np.int64)).sum(axis=1) for c in inc).max()) <= port_max:
            continue
        load = np.zeros(o.size, np.int64)
        cols: list[list[tuple[Connection, int]]] = [[]]
        for c in inc:
            w = np.abs(np.asarray(c.weight, np.int64))
            for j in range(w.shape[1]):
                if cols[-1] and np.any(load + w[:, j] > port_max):
                    cols.append([])
                    load[:] = 0
                load += w[:, j]
                cols[-1].append((c, j))
        if len(cols) == 1:
            continue
        for c in inc:
            net.connections.remove(c)
        for k, part in enumerate(cols):
            for c in inc:
                idx = [j for cc, j in part if cc is c]
                if not idx:
                    continue
                w = np.zeros_like(c.weight)
                w[:, idx] = c.weight[:, idx]
                net.connections.append(dataclasses.replace(c, name=f"{c.name}#{k}", weight=w, part=k))
        o.parts = len(cols)


def _as_conv(graph: Graph, layer: Node, src: str, delay: int = 0) -> Connection | None:
    """A ``conv`` connection when the one synapse chain from ``src`` into ``layer`` is a
    convolution reading ``src`` directly with symmetric padding, or ``src`` itself (an
    identity skip, a 1x1 depthwise kernel of ones), optionally summed by an add: what Lava's
    Conv takes, at any size and without a dense matrix. None for a Dense."""
    dst = layer.name
    chains = [c for c in synapse_chains(graph, dst) if src in c[0].inputs]
    if len(chains) != 1 or len(graph[src].shape) != 3:
        return None
    chain = chains[0]
    if any(not isinstance(op, AddNode) for op in chain[1:]) or chain[0].inputs.count(src) != 1:
        return None
    first, in_shape = chain[0], tuple(graph[src].shape)
    if isinstance(first, AddNode):  # the source itself, added: identity
        if tuple(layer.shape) != in_shape:
            return None
        c = in_shape[0]
        return Connection(f"{src}->{dst}", src, dst, np.ones((c, 1, 1, 1), np.int64), 1, kind="conv",
                          delay=delay, in_shape=in_shape, out_shape=in_shape, groups=c)
    if not (isinstance(first, Conv2dNode) and first.inputs == [src]
            and tuple(first.shape) == tuple(layer.shape)):
        return None
    pt, pl, pb, pr = first.padding
    if pt != pb or pl != pr:
        return None
    w = np.asarray(first.weight_int).astype(np.int64)
    return Connection(f"{src}->{dst}", src, dst, w,
                      int(np.abs(w).max(initial=0)) >> int(first.weight_exp or 0), kind="conv",
                      delay=delay, in_shape=in_shape, out_shape=tuple(first.shape),
                      stride=tuple(first.stride), padding=(pt, pl),
                      dilation=tuple(first.dilation), groups=int(first.groups))


def _add_max_pool(net: Network, graph: Graph, flat: FlatNetwork, node: MaxPool2dNode,
                  depth: dict[str, int], count_bits: int) -> None:
    """Lower max pool ``node`` to a :class:`MaxPoolLayer` and the connections into its
    counters: each counter compartment has exactly one synapse, of weight 1, from a unit
    that sends binary spikes (an IF layer or another max pool), so it counts that unit's
    spikes. Read directly from one population with symmetric padding, the connection is a
    grouped convolution (one one-hot kernel per window slot, the pool's stride and padding),
    at any size; otherwise the composed selection matrix, reordered to the counters'
    (channel, slot, position) order. Anything else is a violation (``net.problems``)."""
    name = node.name
    incoming = flat.into(name)
    spiking = {p.name for p in net.populations} | {p.name for p in net.pools}
    if not incoming or any(p.source not in spiking for p in incoming):
        if all(p.source in depth for p in incoming):  # else fed by something already refused
            net.problems.append(Violation(name, "input of a max pool", "not spikes",
                                          "the spikes of an IF layer or a max pool",
                                          _fix_for(node)))
        return
    signed = {p.name for p in net.populations if p.spikes == "signed"}
    if any(p.source in signed for p in incoming):
        net.problems.append(Violation(name, "input of a max pool", "signed spikes",
                                      "binary spikes (a -1 would lower a counter's maximum)",
                                      "--spikes binary, or convert with --maxpool avg or "
                                      "--maxpool conv"))
        return
    sel = sum((p.matrix for p in incoming[1:]), incoming[0].matrix.copy()).tocsr()
    if (sel.data != 1).any() or (np.diff(sel.indptr) > 1).any() or np.any(flat.bias_every[name]) \
            or np.any(flat.bias_first[name]):
        net.problems.append(Violation(name, "input of a max pool", "weighted or summed",
                                      "one spike (weight 1) per window element", _fix_for(node)))
        return
    if name in graph.outputs:
        net.problems.append(Violation(name, "output kind", node.op, "a weighted layer "
                                      "(non-spiking accumulator)", "end the model with a linear layer"))
        return
    d = max(depth[p.source] for p in incoming) + 1
    depth[name] = d
    c, ho, wo = (int(v) for v in node.shape)
    k = int(node.kernel[0] * node.kernel[1])
    net.pools.append(MaxPoolLayer(name, tuple(node.shape), d, k, int(count_bits)))
    src = incoming[0].source
    pt, pl, pb, pr = node.padding
    direct = synapse_chains(graph, name) == [[]] and node.inputs == [src]
    if len(incoming) == 1 and direct and (pt, pl) == (pb, pr):
        w = np.zeros((c * k, 1) + tuple(node.kernel), np.int64)
        w[np.arange(c * k), 0, np.tile(np.arange(k), c) // node.kernel[1],
          np.tile(np.arange(k), c) % node.kernel[1]] = 1
        net.connections.append(Connection(
            f"{src}->{name}", src, name, w, 1, kind="conv", delay=d - 1 - depth[src],
            in_shape=tuple(graph[src].shape), out_shape=(c * k, ho, wo),
            stride=tuple(node.stride), padding=(pt, pl), groups=c))
        return
    # flatten_network orders compartments (unit, slot); the counters are (channel, slot, position)
    unit = np.arange(c * ho * wo).reshape(c, 1, ho * wo)
    order = (unit * k + np.arange(k).reshape(1, k, 1)).reshape(-1)
    for proj in incoming:
        s = proj.source
        n_src = int(np.prod(graph[s].shape))
        if n_src * c * k * ho * wo > MAX_DENSE_ENTRIES:
            net.problems.append(Violation(name, f"folded dense connection from '{s}' (entries)",
                                          n_src * c * k * ho * wo, MAX_DENSE_ENTRIES,
                                          "a max pool reading one layer directly, with symmetric "
                                          "padding (lowered as a convolution at any size)"))
            continue
        net.connections.append(Connection(f"{s}->{name}", s, name, proj.matrix[order].toarray(), 1,
                                          delay=d - 1 - depth[s]))


def _fix_for(node: Node) -> str:
    if node.op == "maxpool2d":
        return ("pool the spikes of an IF layer (a ReLU before the max pool), or convert with "
                "--maxpool conv or --maxpool avg (each max pool becomes an average of the same "
                "window; add --train to recover the accuracy)")
    return "replace this operation in the model"
