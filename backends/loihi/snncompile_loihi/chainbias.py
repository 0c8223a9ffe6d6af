"""The bias a layer's synapse chains add, carried through the chain's ops without composing
them into a matrix (what :func:`snncompile.plugin.flatten_network` computes as
``bias_every``/``bias_first``, at the cost of one pass over each op instead of a matrix
per chain): the loihi lowering of a ResNet-50-size network needs the biases, not the
matrices."""

from __future__ import annotations

import numpy as np

from snncompile.ir import (AddNode, AffineNode, AvgPool2dNode, ConcatNode, Conv2dNode, DenseNode,
                           FlattenNode, Graph, Node, PadNode, ReshapeNode, WeightedNode)
from snncompile.plugin import is_population


def chain_bias(graph: Graph, name: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The every-step and first-step bias (flat, int64) the synapse chains of layer ``name``
    add, carried through the chain's ops as the reference simulator computes them (exact
    integers, one pass over each op); None for an op this does not know."""
    memo: dict[str, tuple[np.ndarray, np.ndarray] | None] = {}

    def form(n: Node) -> tuple[np.ndarray, np.ndarray] | None:
        if n.name in memo:
            return memo[n.name]
        shape = tuple(int(d) for d in n.shape)
        if is_population(n):
            memo[n.name] = out = (np.zeros(shape, np.int64), np.zeros(shape, np.int64))
            return out
        ins = [form(graph[i]) for i in n.inputs]
        out = None
        if all(x is not None for x in ins):
            both = tuple(_carry(graph, n, [x[k] for x in ins], shape) for k in range(2))
            out = None if any(b is None for b in both) else both
        if out is not None and isinstance(n, WeightedNode) and n.bias_int is not None:
            b = np.asarray(n.bias_int, np.int64)
            b = b.reshape(shape) if isinstance(n, DenseNode) else np.broadcast_to(
                b.reshape((-1,) + (1,) * (len(shape) - 1)), shape)
            k = 0 if n.bias_mode == "every_step" else 1
            out = tuple(out[j] + b if j == k else out[j] for j in range(2))
        memo[n.name] = out
        return out

    node = graph[name]
    inner = graph[node.inputs[0]] if is_population(node) else node
    got = form(inner) if not is_population(inner) else None
    return None if got is None else (got[0].reshape(-1), got[1].reshape(-1))


def _carry(graph: Graph, n: Node, xs: list[np.ndarray], shape: tuple[int, ...]) -> np.ndarray | None:
    """Op ``n`` applied to integer arrays ``xs`` (its inputs' biases), without its own bias;
    None for an op this does not know (the caller then uses the folded bias)."""
    if isinstance(n, AddNode):
        return sum(xs[1:], xs[0].copy())
    if isinstance(n, ConcatNode):
        return np.concatenate(xs, axis=n.axis)
    if isinstance(n, (FlattenNode, ReshapeNode)):
        return xs[0].reshape(shape)
    x = xs[0]
    if not np.any(x):
        return np.zeros(shape, np.int64)
    if isinstance(n, PadNode):
        k = x.ndim
        return np.pad(x, [(n.pads[i], n.pads[i + k]) for i in range(k)])
    if isinstance(n, DenseNode):
        return np.asarray(n.weight_int, np.int64) @ x.reshape(-1)
    if isinstance(n, AffineNode):
        return x * np.asarray(n.weight_int, np.int64).reshape((-1,) + (1,) * (x.ndim - 1))
    if isinstance(n, (Conv2dNode, AvgPool2dNode)):
        return _window_sum(n, x, shape)
    return None


def _window_sum(n: Node, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A convolution (cross-correlation, groups) or a sum pool of one (C, H, W) integer image."""
    pt, pl, pb, pr = n.padding
    xp = np.pad(x, [(0, 0), (pt, pb), (pl, pr)])
    _, ho, wo = shape
    sy, sx = n.stride
    out = np.zeros(shape, np.int64)
    if isinstance(n, AvgPool2dNode):
        for ky in range(n.kernel[0]):
            for kx in range(n.kernel[1]):
                out += xp[:, ky:ky + sy * (ho - 1) + 1:sy, kx:kx + sx * (wo - 1) + 1:sx]
        return out
    w = np.asarray(n.weight_int, np.int64)
    cout, cin_g, kh, kw = w.shape
    g, dy, dx = int(n.groups), n.dilation[0], n.dilation[1]
    og = cout // g
    for ky in range(kh):
        for kx in range(kw):
            tap = xp[:, ky * dy:ky * dy + sy * (ho - 1) + 1:sy, kx * dx:kx * dx + sx * (wo - 1) + 1:sx]
            for j in range(g):
                out[j * og:(j + 1) * og] += np.einsum("oc,chw->ohw", w[j * og:(j + 1) * og, :, ky, kx],
                                                      tap[j * cin_g:(j + 1) * cin_g])
    return out
