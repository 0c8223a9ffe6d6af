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
    node = graph[name]
    paths: list[tuple[str, list[Node]]] = []
    for src in node.inputs:
        if is_population(graph[src]):
            paths.append((src, [node]))
        else:
            paths.extend((s, p + [node]) for s, p in sourced_paths(graph, src))
    return paths


def incoming_paths(graph: Graph, name: str) -> list[list[Node]]:
    """The paths of :func:`sourced_paths`, without their source populations."""
    return [p for _, p in sourced_paths(graph, name)]


def synapse_chains(graph: Graph, name: str) -> list[list[Node]]:
    """The chains of ops from a source population (exclusive) to the neurons of layer
    ``name`` (a population's own node is not part of its chains): one per path, so a neuron
    after an add or a concat counts every branch (a conv or dense after a concat reads all
    of its inputs)."""
    return [c for _, c in sourced_chains(graph, name)]


def sourced_chains(graph: Graph, name: str) -> list[tuple[str, list[Node]]]:
    """The chains of :func:`synapse_chains`, each with the population it starts from."""
    own = is_population(graph[name])
    return [(s, p[:-1] if own else p) for s, p in sourced_paths(graph, name)]


def chain_fanin(chain: list[Node], nonzero: bool = True) -> int:
    """Synapses one neuron receives through one chain: the product of its ops' fan-ins."""
    prod = 1
    for op in chain:
        prod *= op_fanin(op, nonzero)
    return prod


def population_fanin(graph: Graph, name: str) -> int:
    """Upper bound of the synapses one neuron of layer ``name`` receives through its synapse
    chains (exact for dense/conv chains with non-overlapping pools): the number every
    fan-in limit is checked against."""
    return sum(chain_fanin(c) for c in synapse_chains(graph, name))


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
