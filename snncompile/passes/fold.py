"""Folding passes on ANN graphs. Each is a function Graph -> Graph that returns a new,
validated graph and never mutates its input.

Naming: when a node absorbs the node after it (a BatchNorm folded into its convolution, two
affine maps merged), the result takes the name of the *later* node. IR names are ONNX tensor
names, so every node keeps computing the tensor it is named after, and consumers need no
rewiring. The one exception is the ReLU moved in front of a max pool, which gets a new name
``<relu>#prepool`` and reads its calibration statistics from the pool's input tensor.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from ..ir import (AffineNode, AvgPool2dNode, ConcatNode, Conv2dNode, DenseNode, FlattenNode, Graph,
                  MaxPool2dNode, Node, PadNode, ReluNode, ReshapeNode)

Pass = Callable[[Graph], Graph]
# One rewrite step on a copied graph: the new node list, or None when nothing matched.
_Step = Callable[[Graph, dict[str, list[Node]]], "list[Node] | None"]


def remove_noops(graph: Graph) -> Graph:
    """Drop nodes that compute the identity (affine 1*x+0, reshape to the same shape, flatten
    of a vector, zero pad, 1x1 stride-1 pooling, one-input concat); rewire their consumers."""
    g = graph.copy()
    repl: dict[str, str] = {}
    nodes = []
    for n in g.nodes:
        n.inputs = [repl.get(i, i) for i in n.inputs]
        if n.inputs and _is_noop(n, g[n.inputs[0]].shape):
            repl[n.name] = n.inputs[0]
        else:
            nodes.append(n)
    return g.replace_nodes(nodes, [repl.get(o, o) for o in g.outputs])


def merge_affines(graph: Graph) -> Graph:
    """Affine A1 feeding only affine A2 -> one affine (named A2): a2 (a1 x + b1) + b2."""
    def step(g: Graph, cons: dict[str, list[Node]]) -> list[Node] | None:
        for n in g.nodes:
            if isinstance(n, AffineNode) and n.weight_int is None:
                p = g[n.inputs[0]]
                if isinstance(p, AffineNode) and p.weight_int is None and _only_feeds(g, cons, p, n):
                    w = n.weight.astype(np.float64) * p.weight
                    b = n.weight.astype(np.float64) * _bias(p) + _bias(n)
                    merged = dataclasses.replace(n, inputs=list(p.inputs), weight=_f32(w), bias=_f32(b))
                    return [merged if m is n else m for m in g.nodes if m is not p]
        return None
    return _fixpoint(graph, step)


def fold_affine_into_weighted(graph: Graph) -> Graph:
    """Affine after a Conv2d/Dense that feeds only it -> scaled weights and bias (named after
    the affine). Exact: a (W x + b) + c = (a W) x + (a b + c) per output channel."""
    def step(g: Graph, cons: dict[str, list[Node]]) -> list[Node] | None:
        for n in g.nodes:
            if isinstance(n, AffineNode) and n.weight_int is None:
                p = g[n.inputs[0]]
                if isinstance(p, (Conv2dNode, DenseNode)) and p.weight_int is None \
                        and _only_feeds(g, cons, p, n):
                    a = n.weight.astype(np.float64)
                    w = p.weight * a.reshape((-1,) + (1,) * (p.weight.ndim - 1))
                    b = a * _bias(p) + _bias(n)
                    folded = dataclasses.replace(p, name=n.name, weight=_f32(w), bias=_f32(b),
                                                 shape=n.shape)
                    return [folded if m is p else m for m in g.nodes if m is not n]
        return None
    return _fixpoint(graph, step)


def swap_maxpool_relu(graph: Graph) -> Graph:
    """MaxPool feeding only a (clipped) ReLU -> the ReLU first, then the pool (named after the
    ReLU). Exact: a non-decreasing function commutes with max. Putting the ReLU first gives the
    pooled layer spiking inputs, so the pool acts on spike counts."""
    def step(g: Graph, cons: dict[str, list[Node]]) -> list[Node] | None:
        for m in g.nodes:
            if isinstance(m, MaxPool2dNode):
                r = cons.get(m.name, [])
                if len(r) == 1 and isinstance(r[0], ReluNode) and _only_feeds(g, cons, m, r[0]):
                    relu, src = r[0], m.inputs[0]
                    pre = ReluNode(name=_unique(g, f"{relu.name}#prepool"), inputs=[src],
                                   shape=g[src].shape, max_value=relu.max_value, calib_tensor=src)
                    pool = dataclasses.replace(m, name=relu.name, inputs=[pre.name], shape=relu.shape)
                    out: list[Node] = []
                    for n in g.nodes:
                        if n is m:
                            out += [pre, pool]
                        elif n is not relu:
                            out.append(n)
                    return out
        return None
    return _fixpoint(graph, step)


DEFAULT_PASSES: tuple[Pass, ...] = (remove_noops, merge_affines, fold_affine_into_weighted,
                                    swap_maxpool_relu, remove_noops)


def run_passes(graph: Graph, passes: tuple[Pass, ...] = DEFAULT_PASSES) -> Graph:
    """Apply ``passes`` in order and return the final graph."""
    for p in passes:
        graph = p(graph)
    return graph


# -- helpers ------------------------------------------------------------------------------
def _fixpoint(graph: Graph, step: _Step) -> Graph:
    g = graph.copy()
    while True:
        cons: dict[str, list[Node]] = {}
        for n in g.nodes:
            for i in n.inputs:
                cons.setdefault(i, []).append(n)
        nodes = step(g, cons)
        if nodes is None:
            return g.replace_nodes(list(g.nodes))
        g = g.replace_nodes(nodes)


def _only_feeds(g: Graph, cons: dict[str, list[Node]], p: Node, n: Node) -> bool:
    """True when ``n`` is the only reader of ``p`` and ``p`` is not a graph output."""
    return p.name not in g.outputs and [c.name for c in cons.get(p.name, [])] == [n.name] \
        and n.inputs == [p.name]


def _is_noop(n: Node, in_shape: tuple[int, ...]) -> bool:
    if isinstance(n, AffineNode):
        return n.weight_int is None and bool(np.all(n.weight == 1)) and not np.any(_bias(n))
    if isinstance(n, (ReshapeNode, FlattenNode)):
        return tuple(n.shape) == tuple(in_shape)
    if isinstance(n, PadNode):
        return not any(n.pads)
    if isinstance(n, ConcatNode):
        return len(n.inputs) == 1
    if isinstance(n, (AvgPool2dNode, MaxPool2dNode)):
        return tuple(n.kernel) == (1, 1) and tuple(n.stride) == (1, 1) and not any(n.padding)
    return False


def _bias(n: Node) -> np.ndarray:
    b = getattr(n, "bias", None)
    return np.zeros(n.weight.shape[0]) if b is None else b.astype(np.float64)


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def _unique(g: Graph, base: str) -> str:
    name, k = base, 1
    while name in g:
        k += 1
        name = f"{base}_{k}"
    return name
