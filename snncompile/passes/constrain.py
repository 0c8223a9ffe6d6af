"""Hardware constraints on a converted graph: weight width (``--bits``) and fan-in (``--fanin``).

Fan-in is counted as :func:`snncompile.ir.structure.population_fanin` counts it (and as
``evaluate`` and every backend's fan-in rule count it), for the layers of
:func:`snncompile.ir.structure.fanin_layers`: the synapses one neuron receives through its
synapse chains. A sum pool before a convolution multiplies the convolution's fan-in by the
pool's window (each pooled input is a synapse of the composed connection), so the
convolution may keep only ``F // k^2`` non-zero weights per output channel. A conv or dense
after a concat counts each weight once, so it keeps ``F``; the chains an add joins share the
limit equally, a chain smaller than its share keeping all and leaving the rest to the others,
after what chains without weights to prune need (tuning may spend such a split jointly per
neuron: :func:`shared_budgets`). Pruning keeps the largest magnitudes
(per output neuron of a dense layer, per output channel over in_ch x kh x kw of a
convolution); the kept pattern is fixed when a layer is constrained.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Mapping

import numpy as np

from ..errors import UsageError
from ..ir import AddNode, Conv2dNode, DenseNode, Graph, Node, WeightedNode
from ..ir.structure import summed_counts, chain_counts, chain_fanin, fanin_layers, op_fanin, ported_chains
from .requant import with_params

PRUNABLE = (Conv2dNode, DenseNode)


def fanin_budgets(graph: Graph, fanin: int) -> dict[str, int]:
    """Per conv/dense node, how many non-zero weights one output neuron may keep so that
    every layer's fan-in, as the fan-in rule counts it (``population_fanin`` over
    ``fanin_layers``), is at most ``fanin``. Raises UsageError naming the layer when the limit
    is below what the rest of its synapse chains alone need."""
    budgets: dict[str, int] = {}
    for name in fanin_layers(graph):
        _share(graph, name, fanin, budgets)
    return budgets


def shared_budgets(graph: Graph, fanin: int) -> dict[tuple[str, ...], int]:
    """Groups of conv/dense nodes whose budgets (:func:`fanin_budgets`) one neuron may spend
    jointly, with the group's total: the branches of an add into one layer, each a single
    conv or dense op joined by adds alone, each weight one synapse. The fan-in rule counts
    the sum over the chains per neuron, so a neuron may keep more weights in one branch and
    fewer in the other: the equal split of :func:`fanin_budgets` gives a ResNet block's
    3x3 body conv 32 of 576 weights at ``--fanin 64`` beside a 1x1 projection that keeps
    all of its 32, whichever of them carries more of the neuron's input."""
    budgets = fanin_budgets(graph, fanin)
    seen: dict[str, int] = {}
    found: list[tuple[str, ...]] = []
    for name in fanin_layers(graph):
        chains = ported_chains(graph, name)
        for _, steps in chains:
            for op, _ in steps:
                if isinstance(op, PRUNABLE):
                    seen[op.name] = seen.get(op.name, 0) + 1
        ops: list[Node] = []
        for src, steps in chains:
            weighted = [i for i, (op, _) in enumerate(steps) if isinstance(op, PRUNABLE)]
            if not weighted:
                continue
            i = weighted[0]
            if (len(weighted) > 1 or not all(isinstance(op, AddNode) for op, _ in steps[i + 1:])
                    or not steps[i + 1:] or int(chain_counts(graph, src, steps[:i], nonzero=False).max()) != 1):
                ops = []
                break
            ops.append(steps[i][0])
        names = tuple(dict.fromkeys(op.name for op in ops))
        if (len(names) > 1 and all(n in budgets for n in names)
                and any(budgets[n] < op_fanin(graph[n], nonzero=False) for n in names)):
            found.append(names)
    return {g: sum(budgets[n] for n in g) for g in found if all(seen[n] == 1 for n in g)}


def _groups(cut: list[tuple[str, list]]) -> list[list[int]]:
    """The chains (indices into ``cut``) that share a prunable op, transitively: the chains
    of every input of a concat read by one conv are one group, pruned by one row budget."""
    owner: dict[str, int] = {}
    parent = list(range(len(cut)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i, (_, steps) in enumerate(cut):
        for op, _ in steps:
            if isinstance(op, PRUNABLE):
                if op.name in owner:
                    parent[root(i)] = root(owner[op.name])
                else:
                    owner[op.name] = i
    out: dict[int, list[int]] = {}
    for i in range(len(cut)):
        out.setdefault(root(i), []).append(i)
    return list(out.values())


def _load(graph: Graph, op: Node, chains: list[tuple[str, list]]) -> int:
    """Synapses of the layer each weight of ``op`` stands for, at most, over ``chains``
    (unpruned): per input column of ``op``, what the chains bring to it (a concat input
    fills only its own columns) times the fan-in of the ops after it; chains that leave
    ``op`` by different paths add their maxima (an upper bound where the paths merge)."""
    after: dict[tuple[str, ...], np.ndarray] = {}
    for src, steps in chains:
        ops = [o for o, _ in steps]
        names = [o.name for o in ops]
        if op.name not in names:
            continue
        i = names.index(op.name)
        key = tuple(o.name for o in ops[i + 1:])
        v = chain_counts(graph, src, steps[:i], nonzero=False) * chain_fanin(ops[i + 1:], nonzero=False)
        width = (op.weight.shape[1] * op.groups if isinstance(op, Conv2dNode)
                 else op.weight.shape[1])
        if len(v) != width:  # not attributable per column: the largest everywhere
            v = np.full(width, int(v.max(initial=0)), np.int64)
        after[key] = after[key] + v if key in after else v
    return sum(int(v.max(initial=0)) for v in after.values())


def _split(avail: int, full: list[int], need: list[int]) -> list[int]:
    """``avail`` split over groups of unpruned fan-in ``full`` in equal shares, where a group
    smaller than its share keeps all of it and the rest goes to the others (nothing of the
    limit is left unused), and a group whose ``need`` is above its share gets its need
    (the caller checked that the needs fit)."""
    if sum(full) <= avail:
        return list(full)
    out: dict[int, int] = {}
    left, rest = set(range(len(full))), avail
    while left:
        each = rest // len(left)
        pin = ({g: full[g] for g in left if full[g] <= each}
               or {g: need[g] for g in left if need[g] > each})
        if not pin:
            break
        for g, v in pin.items():
            out[g] = v
            rest -= v
            left.discard(g)
    if left:
        each, extra = divmod(rest, len(left))
        for k, g in enumerate(sorted(left)):
            out[g] = each + (k < extra)
    return [out[g] for g in range(len(full))]


def _share(graph: Graph, name: str, fanin: int, budgets: dict[str, int]) -> None:
    """Split ``fanin`` over the chains into layer ``name``: chains without weights to prune
    keep what they have; the others, grouped by the conv/dense they share (a concat's
    inputs read by one conv are one group), share the rest (:func:`_split`). A group's ops keep ``share // load`` weights per row (:func:`_load`),
    a uniform row budget: exact for one conv/dense after a concat whose inputs come through
    the same ops, conservative where they bring different counts per weight."""
    chains = ported_chains(graph, name)
    prunable = [any(isinstance(op, PRUNABLE) for op, _ in steps) for _, steps in chains]
    fixed = summed_counts([chain_counts(graph, s, st, nonzero=False)
                     for (s, st), p in zip(chains, prunable) if not p])
    cut = [c for c, p in zip(chains, prunable) if p]
    if not cut:
        if fixed > fanin:
            raise UsageError(f"--fanin {fanin} is too small for layer '{name}': its inputs "
                             f"(no weights to prune) give it fan-in {fixed}",
                             f"use --fanin {fixed} or more")
        return
    groups = [[cut[i] for i in g] for g in _groups(cut)]
    loads = [{op.name: (op, _load(graph, op, g)) for _, steps in g for op, _ in steps
              if isinstance(op, PRUNABLE)} for g in groups]
    need = [max(ld for _, ld in lg.values()) for lg in loads]
    full = [summed_counts([chain_counts(graph, s, st, nonzero=False) for s, st in g]) for g in groups]
    least = fixed + sum(need)
    if fanin < least:
        top, op = max((ld, o.name) for lg in loads for o, ld in lg.values())
        rest = f" and its inputs without weights to prune add {fixed}" if fixed else ""
        pooled = ("; or pool to a smaller map before it (a weight after a pool reads every "
                  "input of its window: a global average pool over 16x16 gives each weight 256)"
                  if top > 1 else "")
        raise UsageError(f"--fanin {fanin} is too small for layer '{name}': the ops around "
                         f"'{op}' alone connect {top} inputs per weight{rest}",
                         f"use --fanin {least} or more{pooled}")
    for share, lg in zip(_split(fanin - fixed, full, need), loads):
        for op, ld in lg.values():
            b = share // ld
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
    return dict(iter_fanin_masks(graph, fanin, mode))


def iter_fanin_masks(graph: Graph, fanin: int, mode: str = "magnitude") -> Iterator[tuple[str, np.ndarray]]:
    """:func:`fanin_masks` one node at a time: at VGG-19 size all masks at once are 0.5 GB."""
    for name, k in fanin_budgets(graph, fanin).items():
        yield name, FANIN_MODES[mode](np.asarray(graph[name].weight, np.float32), k)


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


def pruned_share(graph: Graph, masks: Mapping[str, np.ndarray] | Iterable[tuple[str, np.ndarray]]) -> float:
    """The share of all weights of ``graph``'s weighted nodes that ``masks`` (by node name,
    or :func:`iter_fanin_masks`) remove."""
    total = sum(int(np.asarray(n.weight).size) for n in graph.nodes if isinstance(n, WeightedNode))
    pairs = masks.items() if isinstance(masks, Mapping) else masks
    removed = sum(int(m.size - m.sum()) for _, m in pairs)
    return removed / total if total else 0.0
