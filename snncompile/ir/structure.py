"""Structural figures of a graph: populations, fan-in, fan-out, ANN MACs.

A *population* is a node whose outputs are neuron states users think of as a layer: the
analog input, IF layers, spike-count max pools, and the (non-spiking) output accumulators.
Everything between populations (weighted ops, sum pools, reshapes, pads, concats, adds) is
the *synapse chain* feeding the next population. Fan-in and SynOps are counted over those
chains, as the papers and sinabs count them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import (AddNode, AffineNode, AvgPool2dNode, ConcatNode, Conv2dNode, DenseNode, FlattenNode,
                 Graph, IFNode, InputNode, MaxPool2dNode, Node, PadNode, ReluNode, ReshapeNode,
                 WeightedNode)

# ReLU nodes of an ANN graph are the IF layers-to-be, so they bound chains the same way.
POPULATION_TYPES = (InputNode, IFNode, MaxPool2dNode, ReluNode)


def is_population(node: Node) -> bool:
    return isinstance(node, POPULATION_TYPES)


def weight_values(node: WeightedNode) -> np.ndarray:
    """The weights that define connectivity: integers when converted, floats otherwise."""
    return node.weight_int if node.weight_int is not None else node.weight


def zeroed_layers(graph: Graph) -> list[str]:
    """Converted weighted nodes whose float weights are not all zero but whose integer
    weights are: the quantizer rounded the whole layer away (typically a branch much weaker
    than the other input of the add whose scale it shares), so it has no effect."""
    return [n.name for n in graph.nodes if isinstance(n, WeightedNode) and n.weight_int is not None
            and np.any(n.weight) and not np.any(n.weight_int)]


def op_fanin(node: Node, nonzero: bool = True) -> int:
    """Largest number of inputs one output element of this op reads (non-zero weights only
    when ``nonzero``)."""
    if isinstance(node, (Conv2dNode, DenseNode)):
        w = weight_values(node)
        if not nonzero:
            return int(np.prod(w.shape[1:]))
        return int((w.reshape(w.shape[0], -1) != 0).sum(axis=1).max(initial=0))
    if isinstance(node, AffineNode):
        return 1
    if isinstance(node, AvgPool2dNode):
        return int(node.kernel[0] * node.kernel[1])
    return 1


def fanin_layers(graph: Graph) -> list[str]:
    """The layers whose neurons receive synapses, so whose fan-in a target limits: every
    population but the input (IF layers, ReLUs of an ANN graph, spiking max pools) and every
    other output. Conversion, tuning and every backend's fan-in rule count these, and only these."""
    outs = set(graph.outputs)
    return [n.name for n in graph.nodes
            if not isinstance(n, InputNode) and (is_population(n) or n.name in outs)]


def ported_paths(graph: Graph, name: str) -> list[tuple[str, list[tuple[Node, int]]]]:
    """The paths of :func:`sourced_paths`, each node with the input index (port) the path
    enters it by: what tells which slice of a concat a path fills."""
    node = graph[name]
    paths: list[tuple[str, list[tuple[Node, int]]]] = []
    for port, src in enumerate(node.inputs):
        if is_population(graph[src]):
            paths.append((src, [(node, port)]))
        else:
            paths.extend((s, p + [(node, port)]) for s, p in ported_paths(graph, src))
    return paths


def ancestors(graph: Graph, names: list[str]) -> set[str]:
    """``names`` and every node they read, directly or not."""
    found: set[str] = set()
    stack = list(names)
    while stack:
        k = stack.pop()
        if k not in found:
            found.add(k)
            stack.extend(graph[k].inputs)
    return found


def sourced_paths(graph: Graph, name: str) -> list[tuple[str, list[Node]]]:
    """Every chain of non-population nodes from a population (exclusive) to ``name``
    (inclusive of the node itself when it is not a population), with that population."""
    return [(s, [n for n, _ in p]) for s, p in ported_paths(graph, name)]


def incoming_paths(graph: Graph, name: str) -> list[list[Node]]:
    """The paths of :func:`sourced_paths`, without their source populations."""
    return [p for _, p in sourced_paths(graph, name)]


def synapse_chains(graph: Graph, name: str) -> list[list[Node]]:
    """The chains of ops from a source population (exclusive) to the neurons of layer
    ``name`` (a population's own node is not part of its chains): one per path, so a neuron
    after an add or a concat has one chain per branch."""
    return [c for _, c in sourced_chains(graph, name)]


def sourced_chains(graph: Graph, name: str) -> list[tuple[str, list[Node]]]:
    """The chains of :func:`synapse_chains`, each with the population it starts from."""
    return [(s, [n for n, _ in c]) for s, c in ported_chains(graph, name)]


def ported_chains(graph: Graph, name: str) -> list[tuple[str, list[tuple[Node, int]]]]:
    """The chains of :func:`sourced_chains` with the ports of :func:`ported_paths`."""
    own = is_population(graph[name])
    return [(s, p[:-1] if own else p) for s, p in ported_paths(graph, name)]


def chain_fanin(chain: list[Node], nonzero: bool = True) -> int:
    """Synapses one neuron receives through one chain, not knowing which concat input the
    chain enters by: the product of its ops' full fan-ins (an upper bound of
    :func:`chain_counts`)."""
    prod = 1
    for op in chain:
        prod *= op_fanin(op, nonzero)
    return prod


DENSE_CHUNK = 1 << 22   # weights of a dense layer counted at once by chain_counts


def _shape(graph: Graph, name: str) -> tuple[int, ...]:
    """A node's output shape, inferred where a graph built by hand was never validated."""
    n = graph[name]
    return tuple(n.shape) if n.shape else tuple(n.infer_shape([_shape(graph, i) for i in n.inputs]))


def chain_counts(graph: Graph, src: str, steps: list[tuple[Node, int]],
                 nonzero: bool = True) -> np.ndarray:
    """Per index of the leading axis of the chain's output (a channel of a (C, H, W) tensor,
    a unit of a vector), the most synapses one neuron there receives from ``src`` through the
    chain ``steps`` (ops with their ports, :func:`ported_chains`); 0 where the chain does
    not reach.

    A concat places the chain in its input's slice, so a conv (dense) after it counts only
    the kernel slice over (the columns of) that slice's channels: the chains of all concat
    inputs together count each weight once. Ops compose by how many inputs each output
    reads (a sum pool multiplies by its window, a conv sums its per-input-channel taps), so
    the count is exact for one conv/dense with non-overlapping pools and an upper bound
    otherwise (overlapping pools, two weighted ops in one chain, padding ignored). A concat
    along a spatial axis, or a reshape that is not a flatten, keeps the chain's largest
    count for every index (the unattributed upper bound)."""
    v = np.ones(_shape(graph, src)[0], np.int64)
    for op, port in steps:
        ins = [_shape(graph, i) for i in op.inputs]
        out = _shape(graph, op.name)
        if isinstance(op, ConcatNode) and op.axis == 0:
            off = sum(s[0] for s in ins[:port])
            placed = np.zeros(out[0], np.int64)
            placed[off:off + len(v)] = v
            v = placed
        elif isinstance(op, Conv2dNode):
            w = weight_values(op)
            taps = (w != 0).sum(axis=(2, 3)) if nonzero else np.full(w.shape[:2], w.shape[2] * w.shape[3])
            per_group = w.shape[0] // op.groups
            idx = (np.arange(w.shape[0]) // per_group)[:, None] * w.shape[1] + np.arange(w.shape[1])
            v = (taps.astype(np.int64) * v[idx]).sum(axis=1)
        elif isinstance(op, DenseNode):
            w = weight_values(op)
            if not nonzero:
                v = np.full(w.shape[0], int(v.sum()), np.int64)
            elif np.all(v == v[0]):
                v = (w != 0).sum(axis=1).astype(np.int64) * int(v[0])
            else:
                step = max(1, DENSE_CHUNK // w.shape[1])
                v = np.concatenate([(w[r:r + step] != 0).astype(np.int64) @ v
                                    for r in range(0, w.shape[0], step)])
        elif isinstance(op, (FlattenNode, ReshapeNode)) and len(out) == 1:
            v = np.repeat(v, int(np.prod(ins[port][1:])))  # row-major: a channel is a run
        elif isinstance(op, AvgPool2dNode):
            v = v * int(op.kernel[0] * op.kernel[1])
        elif not (len(out) == len(ins[port]) and out[0] == ins[port][0]):
            v = np.full(out[0], int(v.max(initial=0)) * op_fanin(op, nonzero), np.int64)
        else:  # pads, adds, channel-wise affines, spatial concats: per channel unchanged
            v = v * op_fanin(op, nonzero)
    return v


def summed_counts(vectors: list[np.ndarray]) -> int:
    """Largest per-index sum of chain counts (a vector of another length adds its maximum
    everywhere: an upper bound)."""
    if not vectors:
        return 0
    n = max(len(v) for v in vectors)
    total = np.zeros(n, np.int64)
    for v in vectors:
        total += v if len(v) == n else int(v.max(initial=0))
    return int(total.max(initial=0))


def population_fanin(graph: Graph, name: str, nonzero: bool = True) -> int:
    """The synapses one neuron of layer ``name`` receives through its synapse chains, at
    most (per channel, the sum over the chains of :func:`chain_counts`, maximised): the
    number every fan-in limit is checked against. Exact for dense/conv chains with
    non-overlapping pools; a conv after a concat counts each of its weights once."""
    return summed_counts([chain_counts(graph, s, c, nonzero) for s, c in ported_chains(graph, name)])


def chain_ops(graph: Graph, name: str) -> list[Node]:
    """Distinct non-population nodes feeding population ``name`` (in graph order)."""
    seen: dict[str, Node] = {}
    for chain in synapse_chains(graph, name):
        for op in chain:
            seen[op.name] = op
    order = {n.name: i for i, n in enumerate(graph.nodes)}
    return sorted(seen.values(), key=lambda n: order[n.name])


def weight_bits(node: WeightedNode) -> int:
    """Signed bits needed to hold the node's integer weights (0 when not converted); with a
    weight exponent, the bits of the mantissa ``weight_int / 2^weight_exp`` (which must be
    an integer, else the full width is counted)."""
    if node.weight_int is None:
        return 0
    w = node.weight_int  # no int64 |w| copy: a VGG-19 layer has 100M weights
    m = max(int(w.max(initial=0)), -int(w.min(initial=0)))
    e = int(getattr(node, "weight_exp", 0) or 0)
    if e and not np.any(w & ((1 << e) - 1)):  # every weight a multiple of 2^e
        m >>= e
    return int(m).bit_length() + 1


def ann_macs(graph: Graph) -> int:
    """Multiply-accumulates of one ANN forward: outputs x dense fan-in over weighted ops."""
    total = 0
    for n in graph.nodes:
        if isinstance(n, WeightedNode):
            total += int(np.prod(n.shape)) * op_fanin(n, nonzero=False)
    return total


def tensor_kinds(graph: Graph) -> dict[str, str]:
    """What each node outputs: "analog" (the input), "spikes" (0/1 per step: IF layers, max
    pools, and reshapes, pads and concats of spikes) or "current" (anything weighted/summed)."""
    kind: dict[str, str] = {}
    for n in graph.nodes:
        if isinstance(n, InputNode):
            kind[n.name] = "analog"
        elif isinstance(n, (IFNode, MaxPool2dNode)):
            kind[n.name] = "spikes"
        elif isinstance(n, (FlattenNode, ReshapeNode, PadNode, ConcatNode)):
            srcs = {kind[i] for i in n.inputs}
            kind[n.name] = "spikes" if srcs == {"spikes"} else "current"
        else:
            kind[n.name] = "current"
    return kind


def spike_driven(graph: Graph) -> set[str]:
    """Weighted nodes whose input is made of spike events (counted as SynOps): spikes, or
    sums of spikes through pools, as opposed to the analog input or another node's current."""
    kind = tensor_kinds(graph)
    events: dict[str, bool] = {}
    for n in graph.nodes:
        if isinstance(n, InputNode) or isinstance(n, WeightedNode):
            events[n.name] = False
        elif kind[n.name] == "spikes":
            events[n.name] = True
        else:  # sum pools, adds: still events if everything they sum is
            events[n.name] = all(events[i] for i in n.inputs) and not isinstance(n, AddNode)
    return {n.name for n in graph.nodes if isinstance(n, WeightedNode) and events[n.inputs[0]]}


def fanout(graph: Graph, node: WeightedNode) -> np.ndarray:
    """Per input element of a weighted node, the number of non-zero synapses leaving it."""
    in_shape = graph[node.inputs[0]].shape
    w = weight_values(node)
    mask = (w != 0)
    if isinstance(node, DenseNode):
        return mask.sum(axis=0).astype(np.int64)
    if isinstance(node, AffineNode):
        per_c = mask.astype(np.int64)
        return np.broadcast_to(per_c.reshape((-1,) + (1,) * (len(in_shape) - 1)), in_shape).copy()
    if isinstance(node, Conv2dNode):
        import torch  # here, not at the top: `inspect` and `check` need no torch
        import torch.nn.functional as F

        pt, pl, pb, pr = node.padding
        ones = torch.ones((1,) + tuple(node.shape), dtype=torch.float64)
        m = torch.from_numpy(mask.astype(np.float64))
        full = F.conv_transpose2d(ones, m, stride=node.stride, dilation=node.dilation,
                                  groups=node.groups)[0]
        h, wd = in_shape[1] + pt + pb, in_shape[2] + pl + pr
        padded = torch.zeros((in_shape[0], h, wd), dtype=torch.float64)
        hh, ww = min(h, full.shape[1]), min(wd, full.shape[2])
        padded[:, :hh, :ww] = full[:, :hh, :ww]
        return padded[:, pt:pt + in_shape[1], pl:pl + in_shape[2]].round().long().numpy()
    raise TypeError(f"no fan-out rule for {node.op}")


@dataclass
class LayerSummary:
    """What `inspect` and `evaluate` report per layer."""

    name: str
    kind: str
    synapses: str
    shape: tuple[int, ...]
    neurons: int
    max_fanin: int
    weight_bits: int
    params: int


def populations(graph: Graph) -> list[LayerSummary]:
    """One row per layer: every IF layer (ReLU in an ANN graph), spiking max pool, and
    output, with the chain of synaptic ops that feeds it."""
    rows = []
    for name in fanin_layers(graph):
        n = graph[name]
        ops = chain_ops(graph, n.name)
        weighted = [o for o in ops if isinstance(o, WeightedNode)]
        kind = n.op if is_population(n) else "output"
        rows.append(LayerSummary(
            name=n.name, kind=kind, synapses=">".join(o.op for o in ops) or "-",
            shape=tuple(n.shape), neurons=int(np.prod(n.shape)),
            max_fanin=population_fanin(graph, n.name),
            weight_bits=max((weight_bits(o) for o in weighted), default=0),
            params=int(sum(o.weight.size + (o.bias.size if o.bias is not None else 0)
                           for o in weighted))))
    return rows
