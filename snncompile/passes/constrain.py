"""Hardware constraints on a converted graph: weight width (``--bits``) and fan-in (``--fanin``).

Fan-in is counted as :func:`snncompile.ir.structure.population_fanin` counts it (and as
``evaluate`` and every backend's fan-in rule count it), for the layers of
:func:`snncompile.ir.structure.fanin_layers`: the synapses one neuron receives through its
synapse chains. A sum pool before a convolution multiplies the convolution's fan-in by the
pool's window (each pooled input is a synapse of the composed connection), so the
convolution may keep only ``F // k^2`` non-zero weights per output channel; the chains an
add or a concat joins share the limit, after what chains without weights to prune need. Pruning keeps the largest magnitudes
(per output neuron of a dense layer, per output channel over in_ch x kh x kw of a
convolution); the kept pattern is fixed when a layer is constrained.
"""

from __future__ import annotations

import numpy as np

from ..errors import UsageError
from ..ir import Conv2dNode, DenseNode, Graph, Node, WeightedNode
from ..ir.structure import chain_fanin, fanin_layers, synapse_chains
from .requant import with_params

PRUNABLE = (Conv2dNode, DenseNode)


def fanin_budgets(graph: Graph, fanin: int) -> dict[str, int]:
    """Per conv/dense node, how many non-zero weights one output neuron may keep so that
    every layer's fan-in, as the fan-in rule counts it (``population_fanin`` over
    ``fanin_layers``), is at most ``fanin``. Raises UsageError naming the layer when the limit
    is below what the rest of its synapse chains alone need."""
    budgets: dict[str, int] = {}
    for name in fanin_layers(graph):
        _share(name, synapse_chains(graph, name), fanin, budgets)
    return budgets


def _around(op: Node, chain: list[Node]) -> int:
    """Inputs each weight of ``op`` connects through the other (unpruned) ops of ``chain``."""
    return chain_fanin([o for o in chain if o is not op], nonzero=False)


def _share(name: str, group: list[list[Node]], fanin: int, budgets: dict[str, int]) -> None:
    """Split ``fanin`` over the chains into layer ``name``: chains without weights to prune
    keep what they have, the others share the rest equally."""
    cut = [c for c in group if any(isinstance(op, PRUNABLE) for op in c)]
    fixed = sum(chain_fanin(c, nonzero=False) for c in group
                if not any(isinstance(op, PRUNABLE) for op in c))
    if not cut:
        if fixed > fanin:
            raise UsageError(f"--fanin {fanin} is too small for layer '{name}': its inputs "
                             f"(no weights to prune) give it fan-in {fixed}",
                             f"use --fanin {fixed} or more")
        return
    need, op = max((_around(op, c), op.name) for c in cut for op in c if isinstance(op, PRUNABLE))
    least = fixed + len(cut) * need
    if fanin < least:
        rest = f" and its inputs without weights to prune add {fixed}" if fixed else ""
        raise UsageError(f"--fanin {fanin} is too small for layer '{name}': the ops around "
                         f"'{op}' alone connect {need} inputs per weight{rest}",
                         f"use --fanin {least} or more")
    share = (fanin - fixed) // len(cut)
    for c in cut:
        for op in c:
            if isinstance(op, PRUNABLE):
                b = share // _around(op, c)
                budgets[op.name] = min(budgets.get(op.name, b), b)


TOPK_CHUNK = 1 << 22   # weights sorted at once by topk_mask (bounds its temporaries)


def topk_mask(weight: np.ndarray, k: int) -> np.ndarray:
    """1 for the ``k`` largest-magnitude weights of each output row (ties: lower index first),
    0 elsewhere; rows with at most ``k`` entries keep everything."""
    w = np.asarray(weight).reshape(weight.shape[0], -1)
    if k >= w.shape[1]:
        return np.ones(weight.shape, np.float32)
    mask = np.zeros(w.shape, dtype=np.float32)
    step = max(1, TOPK_CHUNK // w.shape[1])  # rows at a time: VGG-19's first dense layer has 100M weights
    for r in range(0, w.shape[0], step):
        # |w| in float64 orders exactly as the weights' own magnitudes (float32 converts exactly)
        order = np.argsort(-np.abs(w[r:r + step].astype(np.float64)), axis=1, kind="stable")[:, :k]
        np.put_along_axis(mask[r:r + step], order, 1.0, axis=1)
    return mask.reshape(weight.shape)


def channel_mask(weight: np.ndarray, k: int) -> np.ndarray:
    """Structured fan-in: 1 for whole input channels of each output channel, those with the
    largest L1 norm over their kernel (ties: lower index first), as many as fit in ``k``
    weights (``k // (kh * kw)``, at least one). For a dense layer (no kernel) it is
    :func:`topk_mask`. A neuron then listens to few input channels, each through its full
    kernel: the pattern hardware that routes per input channel (shared axons) favours."""
    w = np.abs(np.asarray(weight, np.float64))
    if w.ndim <= 2:
        return topk_mask(weight, k)
    taps = int(np.prod(w.shape[2:]))
    per_ch = w.reshape(w.shape[0], w.shape[1], taps).sum(axis=2)
    n_ch = max(1, k // taps)
    if n_ch >= w.shape[1]:
        return np.ones(weight.shape, np.float32)
    order = np.argsort(-per_ch, axis=1, kind="stable")[:, :n_ch]
    keep = np.zeros(per_ch.shape, dtype=np.float32)
    np.put_along_axis(keep, order, 1.0, axis=1)
    return np.broadcast_to(keep.reshape(keep.shape + (1,) * (w.ndim - 2)), w.shape).astype(np.float32)


# How --fanin picks the weights a neuron keeps (``--fanin-mode``).
FANIN_MODES = {"magnitude": topk_mask, "channels": channel_mask}


def fanin_masks(graph: Graph, fanin: int, mode: str = "magnitude") -> dict[str, np.ndarray]:
    """Per conv/dense node with a budget, the 0/1 mask of the weights its neurons keep so that
    every population's fan-in is at most ``fanin`` (``mode``: a key of FANIN_MODES)."""
    return {name: FANIN_MODES[mode](np.asarray(graph[name].weight, np.float32), k)
            for name, k in fanin_budgets(graph, fanin).items()}


def constrain(graph: Graph, bits: int, fanin: int | None = None, fanin_mode: str = "magnitude") -> Graph:
    """The converted graph with every fan-in mask imposed at once and its weights quantized
    to ``bits``: what tuning imposes by its last stage, without the training. It tells
    before tuning whether a target's limits can be met, and is the result of ``--fanin``
    without ``--train``."""
    weights: dict[str, np.ndarray] = {}
    for name, k in (fanin_budgets(graph, fanin).items() if fanin else ()):
        w = np.asarray(graph[name].weight, np.float32)  # one mask alive at a time, not all of them
        weights[name] = w * FANIN_MODES[fanin_mode](w, k)
    return with_params(graph, weights, {}, weight_bits=bits)


def pruned_share(graph: Graph, masks: dict[str, np.ndarray]) -> float:
    """The share of all weights of ``graph``'s weighted nodes that ``masks`` remove."""
    total = sum(int(np.asarray(n.weight).size) for n in graph.nodes if isinstance(n, WeightedNode))
    removed = sum(int(m.size - m.sum()) for m in masks.values())
    return removed / total if total else 0.0
