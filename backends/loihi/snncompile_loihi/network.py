"""The Loihi network: an snncompile IR regrouped into what Lava runs.

Lava connects *neuron populations* through *connection processes*; the IR has many small
linear ops between its populations (conv, dense, affine, sum pools, flatten, reshape, pad,
concat, add). :func:`build_network` makes one connection per synapse chain between two
populations in the chain's own form where Lava has one, so memory grows with the
parameters, not with the connection count: a convolution (any groups, stride, dilation,
symmetric padding) as Lava's Conv with its kernel stored once, an identity skip as a 1x1
depthwise kernel of ones, a dense layer (after flatten/reshape) as its weight matrix, each
optionally summed by adds and optionally behind one sum pool, which becomes a relay: a
depthwise Conv of ones whose window sums reach the connection as graded spikes, one step
later (ResNet-50's classifier reads 2,048 pooled values instead of a 100,352 x 1,000 folded
matrix). Any other chain (two weighted ops in a row, pads, concats, two pools) is taken as
the exact integer matrix the core composes for it (:func:`snncompile.plugin.flatten_network`,
computed only when needed), as a Dense of at most 2^24 entries; composing can widen the
weights (an overlapping pool, two weighted ops), which :mod:`snncompile_loihi.rules` reports.

Branches of different depths may join (a residual skip): every connection process delays
by one step (a relay adds one more), so the shorter branch's connection gets the missing steps as synaptic delay (Lava's
DelayDense, or a delayed LoihiConv, up to 63 steps).

Anything that cannot be folded exactly is recorded in ``Network.problems`` (as violations)
instead of raising, so ``check`` can report every problem at once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from snncompile.ir import (AddNode, AffineNode, AvgPool2dNode, ConcatNode, Conv2dNode, DenseNode,
                           FlattenNode, Graph, IFNode, InputNode, MaxPool2dNode, Node, PadNode,
                           ReshapeNode, WeightedNode)
from snncompile.plugin import (FlatNetwork, Violation, chain_ops, fanin_layers, flatten_network,
                               sourced_chains, synapse_chains)

from . import limits as L
from .chainbias import chain_bias
from .encode import PAYLOAD_MAX, DoesNotFit, bias_fits_neuron, delay_code

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
    # a sum pool in front (kernel, stride, padding (rows, columns)) on the (C, H, W) source:
    # Lava's Conv with a depthwise kernel of ones relays the window sums as graded spikes
    # into this connection (then weight/in_shape are those of the op after the pool)
    pool: tuple[tuple[int, int], tuple[int, int], tuple[int, int]] | None = None
    src_shape: tuple[int, ...] = ()

    @property
    def latency(self) -> int:
        """Steps from a source spike to the target's current: one per Lava connection process."""
        return 2 if self.pool is not None else 1

    @property
    def pool_area(self) -> int:
        return 1 if self.pool is None else self.pool[0][0] * self.pool[0][1]

    def row_bound(self) -> int:
        """Largest sum of |weights| one target neuron receives per unit of source value."""
        w = self.weight
        top = max((int(np.abs(r).sum()) for r in w.reshape(w.shape[0], -1)), default=0)
        return top * self.pool_area

    @property
    def synapses(self) -> int:
        """Non-zero synapses (for a conv: an estimate, kernel taps times output positions)."""
        n = int(np.count_nonzero(self.weight))
        if self.kind == "conv":
            n *= int(np.prod(self.out_shape[1:]))
        if self.pool is not None:
            n += self.pool_area * int(np.prod(self.in_shape))
        return n


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


def _bias(every: np.ndarray, first: np.ndarray) -> tuple[np.ndarray, bool, set[str]]:
    """The per-step bias into a layer (or the per-step unit of a first-step one) from its
    every-step and first-step parts, whether it is a first-step one, and the bias modes its
    synapse chains carry."""
    modes = {m for m, b in (("every_step", every), ("first_step", first)) if np.any(b)}
    return (first if modes == {"first_step"} else every), modes == {"first_step"}, modes


def build_network(graph: Graph, timesteps: int | None = None,
                  flat: FlatNetwork | None = None, layers: set[str] | None = None,
                  progress: Callable[[int, int, str], None] | None = None,
                  count_bits: int = 24) -> Network:
    """Regroup ``graph`` into populations and connections: one per (source population,
    layer) pair, kept in its own form where Lava has one (a convolution, an identity skip,
    a dense layer, each optionally behind a sum pool: :func:`_as_conv`, :func:`_structured`),
    so memory grows with the parameters; otherwise the integer matrix of the synapse chain as
    the core composes it (``flat``, :func:`snncompile.plugin.flatten_network` of ``graph``,
    computed only when such a connection exists). ``layers``: build only these (and what
    they need); ``progress(done, total, name)`` after each layer. Max pools get
    ``count_bits``-wide counters (:func:`_add_max_pool`)."""
    inp = graph.input
    net = Network(inp.name, tuple(inp.shape), inp.mode, inp.bits, int(timesteps or graph.timesteps or 1))
    depth: dict[str, int] = {inp.name: 0}
    outputs = set(graph.outputs)
    order = {n.name: k for k, n in enumerate(graph.nodes)}
    folded = [flat]

    def flat_net() -> FlatNetwork:
        if folded[0] is None:
            folded[0] = flatten_network(graph)
        return folded[0]

    todo = [n for n in graph.nodes if not (isinstance(n, (InputNode,) + LINEAR_OPS) and n.name not in outputs)
            and (layers is None or n.name in layers)]
    for k, node in enumerate(todo):
        if progress is not None:
            progress(k, len(todo), node.name)
        if isinstance(node, MaxPool2dNode):
            _add_max_pool(net, graph, flat_net, node, depth, count_bits)
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
        sources = sorted({s for s, _ in sourced_chains(graph, node.name)}, key=order.__getitem__)
        if any(s not in depth for s in sources):  # fed by something unsupported (already reported)
            continue
        size = int(np.prod(node.shape))
        ir_max = max((max(int(n.weight_int.max(initial=0)), -int(n.weight_int.min(initial=0)))
                      >> int(n.weight_exp or 0)
                      for n in chain_ops(graph, node.name) if isinstance(n, WeightedNode)), default=0)
        conns: list[Connection] = []
        for s in sources:
            conv = _as_conv(graph, node, s)
            kept = [conv] if conv is not None else _structured(graph, node, s)
            if kept:
                for c in kept:
                    conns.append(c)
                    _check_relay(net, c)
                continue
            n_src = int(np.prod(graph[s].shape))
            if n_src * size > MAX_DENSE_ENTRIES:
                net.problems.append(Violation(node.name, f"folded dense connection from '{s}' (entries)",
                                              n_src * size, MAX_DENSE_ENTRIES,
                                              "feed the layer by one convolution or dense layer per source, "
                                              "optionally behind one sum pool (Lava's Conv and Dense take "
                                              "those at any size), or use a smaller layer"))
                continue
            proj = next(p for p in flat_net().into(node.name) if p.source == s)
            conns.append(Connection(f"{s}->{node.name}", s, node.name, proj.matrix.toarray(), ir_max))
        d = max((depth[c.src] + c.latency for c in conns), default=1)
        depth[node.name] = d
        for c in conns:
            c.delay = d - c.latency - depth[c.src]  # extra steps that align a shorter branch (a skip)
            try:
                delay_code(c.delay)  # what the emitter writes
            except DoesNotFit as e:
                net.problems.append(Violation(node.name, f"synaptic delay from '{c.src}' (steps)", e.value,
                                              e.limit, "a shorter skip connection"))
            net.connections.append(c)
        biases = chain_bias(graph, node.name)
        if biases is None:
            fl = flat_net()
            biases = fl.bias_every[node.name], fl.bias_first[node.name]
        bias, first_step, modes = _bias(*biases)
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
    if progress is not None:
        progress(len(todo), len(todo), "")
    return net


def split_outputs(net: Network, port_max: int = L.CURRENT_MAX) -> None:
    """Split each output whose spikes could bring more than ``port_max`` in one step (a
    global pool relayed into the classifier: 16 positions x the weights) into accumulators
    that each receive at most that, summed by the host that reads them. Only outputs fed by
    dense connections from spiking populations are split (a spike, +1 or -1, brings at most
    |w|, a relayed window sum the pool's area times that); the source columns are dealt greedily, in order, to the accumulators."""
    for o in net.outputs:
        inc = net.incoming(o.name)
        if not inc or any(c.kind != "dense" or c.src == net.input_name for c in inc):
            continue
        if sum(c.row_bound() for c in inc) <= port_max:
            continue
        load = np.zeros(o.size, np.int64)
        cols: list[list[tuple[Connection, int]]] = [[]]
        for c in inc:
            w = np.abs(np.asarray(c.weight, np.int64)) * c.pool_area  # a relayed window sum
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


def input_layers(graph: Graph) -> set[str]:
    """The layers the input feeds directly (what the input width decides)."""
    return {n for n in fanin_layers(graph)
            if any(s == graph.input.name for s, _ in sourced_chains(graph, n))}


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


def _structured(graph: Graph, layer: Node, src: str) -> list[Connection]:
    """The synapse chains from ``src`` into ``layer``, one connection each, where every one
    has a form Lava takes at any size without composing it (:func:`_chain_form`); else []."""
    chains = [c for s, c in sourced_chains(graph, layer.name) if s == src]
    out = [_chain_form(graph, layer, src, c) for c in chains]
    if not out or any(c is None for c in out):
        return []
    for k, c in enumerate(out[1:], 1):
        c.name += f"#{k}"
    return out


def _chain_form(graph: Graph, layer: Node, src: str, chain: list[Node]) -> Connection | None:
    """One synapse chain as [sum pool], [flatten/reshape...], one conv or dense reading it,
    then adds; or adds alone (an identity skip). The weights are the op's own (a conv's
    kernel once, shared); a pool in front becomes a relay (Lava's Conv with a depthwise
    kernel of ones, its window sums sent on as graded spikes), never folded into the
    weights. None where the chain is anything else."""
    if chain[0].inputs.count(src) != 1:
        return None
    ops = list(chain)
    while ops and isinstance(ops[-1], AddNode):
        ops.pop()
    src_shape = tuple(graph[src].shape)
    pool = ops.pop(0) if ops and isinstance(ops[0], AvgPool2dNode) else None
    while ops and isinstance(ops[0], (FlattenNode, ReshapeNode)) and len(ops) > 1:
        ops.pop(0)
    if not ops or (len(ops) == 1 and isinstance(ops[0], AffineNode)):
        return _channelwise(layer, src, src_shape, pool, ops[0] if ops else None)
    if len(ops) != 1 or not isinstance(ops[0], (Conv2dNode, DenseNode)) or tuple(ops[0].shape) != tuple(layer.shape):
        return None
    op = ops[0]
    relay = None
    in_shape = src_shape
    if pool is not None:
        relay, in_shape = _relay(pool, src_shape), tuple(pool.shape)
        if relay is None:
            return None
    w = np.asarray(op.weight_int)
    w = w if w.dtype.kind == "i" else w.astype(np.int64)
    top = max(int(w.max(initial=0)), -int(w.min(initial=0))) >> int(op.weight_exp or 0)
    if isinstance(op, DenseNode):
        return Connection(f"{src}->{layer.name}", src, layer.name, w, top, kind="dense",
                          in_shape=in_shape, out_shape=tuple(op.shape), pool=relay, src_shape=src_shape)
    pt, pl, pb, pr = op.padding
    if len(in_shape) != 3 or pt != pb or pl != pr:
        return None
    return Connection(f"{src}->{layer.name}", src, layer.name, w, top, kind="conv",
                      in_shape=in_shape, out_shape=tuple(op.shape), stride=tuple(op.stride),
                      padding=(pt, pl), dilation=tuple(op.dilation), groups=int(op.groups),
                      pool=relay, src_shape=src_shape)


def _relay(pool: AvgPool2dNode, src_shape: tuple[int, ...]):
    """The relay of a sum pool on a (C, H, W) source, as Lava's Conv computes it; None where
    its padding is asymmetric or its output shape is not Lava's (floor)."""
    pt, pl, pb, pr = pool.padding
    (kh, kw), (sh, sw) = pool.kernel, pool.stride
    if len(src_shape) != 3 or pt != pb or pl != pr or tuple(pool.shape) != (
            src_shape[0], (src_shape[1] + 2 * pt - kh) // sh + 1, (src_shape[2] + 2 * pl - kw) // sw + 1):
        return None
    return (kh, kw), (sh, sw), (pt, pl)


def _channelwise(layer: Node, src: str, src_shape: tuple[int, ...], pool: AvgPool2dNode | None,
                 affine: AffineNode | None) -> Connection | None:
    """An identity skip (a depthwise 1x1 kernel of ones) or a per-channel scale (an affine:
    its weights as that kernel) from a (C, H, W) source, optionally behind a pool relay."""
    relay = None if pool is None else _relay(pool, src_shape)
    in_shape = src_shape if pool is None else tuple(pool.shape)
    if len(src_shape) != 3 or tuple(layer.shape) != in_shape or (pool is not None and relay is None):
        return None
    c = in_shape[0]
    w = np.ones((c, 1, 1, 1), np.int64)
    top = 1
    if affine is not None:
        w = np.broadcast_to(np.asarray(affine.weight_int, np.int64).reshape(-1, 1, 1, 1), w.shape).copy()
        top = int(np.abs(w).max(initial=0)) >> int(affine.weight_exp or 0)
    return Connection(f"{src}->{layer.name}", src, layer.name, w, top, kind="conv", in_shape=in_shape,
                      out_shape=in_shape, groups=c, pool=relay, src_shape=src_shape)


def _check_relay(net: Network, c: Connection) -> None:
    """A pool relay sends each window's sum as one graded spike: it must fit the payload."""
    if c.pool is None:
        return
    top = 1
    if c.src == net.input_name:
        top = (2 ** (net.input_bits - 1) - 1) * (net.timesteps if net.input_mode == "once" else 1)
    if top * c.pool_area > PAYLOAD_MAX:
        net.problems.append(Violation(c.dst, f"sum pool of '{c.src}' per step (16-bit graded spike)",
                                      top * c.pool_area, PAYLOAD_MAX,
                                      "fewer --input-bits, --input-mode every_step, or a smaller pool"))


def _add_max_pool(net: Network, graph: Graph, flat_net: Callable[[], FlatNetwork],
                  node: MaxPool2dNode, depth: dict[str, int], count_bits: int) -> None:
    """Lower max pool ``node`` to a :class:`MaxPoolLayer` and the connections into its
    counters: each counter compartment has exactly one synapse, of weight 1, from a unit
    that sends binary spikes (an IF layer or another max pool), so it counts that unit's
    spikes. Read directly from one population with symmetric padding, the connection is a
    grouped convolution (one one-hot kernel per window slot, the pool's stride and padding),
    at any size; otherwise the composed selection matrix, reordered to the counters'
    (channel, slot, position) order (``flat_net()``, composed only then). Anything else is
    a violation (``net.problems``)."""
    name = node.name
    src = node.inputs[0]
    pt, pl, pb, pr = node.padding
    if len(node.inputs) == 1 and src in depth and (pt, pl) == (pb, pr) and name not in graph.outputs \
            and any(p.name == src for p in net.populations + net.pools):
        incoming = [_Source(src)]  # the pool reads one population directly: no composed matrix
    else:
        incoming = flat_net().into(name)
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
    if not isinstance(incoming[0], _Source):
        flat = flat_net()
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
    if isinstance(incoming[0], _Source):
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


@dataclass
class _Source:
    """The one population a max pool reads directly (what :func:`_add_max_pool` needs of a
    composed projection when it composes none)."""

    source: str


def _fix_for(node: Node) -> str:
    if node.op == "maxpool2d":
        return ("pool the spikes of an IF layer (a ReLU before the max pool), or convert with "
                "--maxpool conv or --maxpool avg (each max pool becomes an average of the same "
                "window; add --train to recover the accuracy)")
    return "replace this operation in the model"
