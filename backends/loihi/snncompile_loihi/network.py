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

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from snncompile.ir import (AddNode, AffineNode, AvgPool2dNode, ConcatNode, Conv2dNode, DenseNode,
                           FlattenNode, Graph, IFNode, InputNode, Node, PadNode, ReshapeNode,
                           WeightedNode)
from snncompile.plugin import (FlatNetwork, Violation, chain_ops, fanin_layers, flatten_network,
                               sourced_chains, synapse_chains)

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
                  progress: Callable[[int, int, str], None] | None = None) -> Network:
    """Regroup ``graph`` into populations and connections: one per (source population,
    layer) pair, kept in its own form where Lava has one (a convolution, an identity skip,
    a dense layer, each optionally behind a sum pool: :func:`_as_conv`, :func:`_structured`),
    so memory grows with the parameters; otherwise the integer matrix of the synapse chain as
    the core composes it (``flat``, :func:`snncompile.plugin.flatten_network` of ``graph``,
    computed only when such a connection exists). ``layers``: build only these (and what
    they need); ``progress(done, total, name)`` after each layer."""
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
                node.membrane_bits))
        else:
            net.outputs.append(Output(node.name, tuple(node.shape), d, bias))
    if progress is not None:
        progress(len(todo), len(todo), "")
    return net


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


def _fix_for(node: Node) -> str:
    if node.op == "maxpool2d":
        return ("convert with --maxpool conv or --maxpool avg (each max pool becomes an average "
                "of the same window; add --train to recover the accuracy), or use average pooling "
                "or a stride-2 convolution in the model")
    return "replace this operation in the model"
