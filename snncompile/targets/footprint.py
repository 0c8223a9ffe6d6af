"""What one core must hold for a slice of a layer, read from the graph alone.

Mapping a network onto cores needs, for a run of ``n`` consecutive units of a layer: the
compartments, the weights the core stores, the synapses its neurons receive, and the
presynaptic axons that reach it. :func:`layer_footprints` derives these from each layer's
synapse chains (:func:`snncompile.ir.structure.synapse_chains`) without building a synapse
matrix, so a ResNet-50-size graph is sized in seconds, and memory grows with the
parameters, not with the dense connection count (:func:`flatten_network` composes exactly
what these figures describe, for backends that need the matrices).

Two ways of counting, because targets differ:

- *shared* (a target with weight sharing, e.g. Loihi 2): a convolution's kernel is stored
  once per core for all its output positions, and its input arrives on one axon per source
  channel (the spike carries its position); a sum pool in front of a weighted op merges its
  window onto one axon (spikes to the same axon add up), so a dense layer after a 7x7 pool
  has the fan-in of its weights (2,048), not of the folded matrix (100,352).
- *folded* (a target that stores the composed matrix, e.g. cyclesim): every non-zero of the
  composed matrix is a synapse, every distinct presynaptic unit an axon.

Both are upper bounds for a slice that starts anywhere (a slice may straddle channels and
rows), so a mapping built on them never under-counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..ir import (AffineNode, AvgPool2dNode, Conv2dNode, DenseNode, FlattenNode, Graph,
                  MaxPool2dNode, Node, ReshapeNode, WeightedNode)
from ..ir.structure import chain_counts, chain_fanin, fanin_layers, ported_chains, summed_counts, weight_values

@dataclass
class Chain:
    """One synapse chain into a layer, as geometry.

    ``kind``: "conv" (a convolution, or a channel-wise op, with shared weights), "dense" (a
    weight matrix), or "folded" (anything else: counted as its composed matrix, no sharing).
    ``fanin``: synapses one neuron receives with sharing; ``folded_fanin``: through the
    composed matrix (``population_fanin``'s count for this chain). ``kernel``: weights
    stored per output channel (conv). ``rows``: non-zero weights per output unit (dense).
    ``rf``/``stride``: receptive field and stride of one output position in the source's
    (H, W) grid. ``src_channels``: source channels one output channel reads."""

    source: str
    source_shape: tuple[int, ...]
    kind: str
    fanin: int
    folded_fanin: int
    kernel: int = 0
    rows: np.ndarray | None = None
    axons: int = 0                  # dense: presynaptic axons (after pool sharing) the layer reads
    share: int = 1                  # dense: source units merged onto one axon (a pool in front)
    weight_max: int = 0             # largest |weight| of the composed matrix (an upper bound
                                    # where pools overlap in front of the weighted op)
    rf: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    src_channels: int = 1
    grouped: bool = False           # each output channel reads only its group's channels
    counts: np.ndarray | None = None  # per output channel/unit, the folded synapses (chain_counts)


@dataclass
class Footprint:
    """A layer (a population that receives synapses) and its chains."""

    name: str
    shape: tuple[int, ...]
    slots: int                      # compartments per unit (a max pool's window)
    chains: list[Chain] = field(default_factory=list)
    consumers: int = 0              # layers this one's spikes reach (output axons per neuron)

    @property
    def units(self) -> int:
        return int(np.prod(self.shape))

    @property
    def fanin(self) -> int:
        """Largest synapses into one neuron, with sharing."""
        return sum(c.fanin for c in self.chains)

    @property
    def folded_fanin(self) -> int:
        """Largest synapses into one neuron through the composed matrices (per channel, the
        sum over the chains: ``population_fanin``)."""
        return summed_counts([c.counts if c.counts is not None else np.array([c.folded_fanin])
                              for c in self.chains])

    @property
    def weight_max(self) -> int:
        """Largest |weight| of the composed matrices (exact, or an upper bound where sum
        pools overlap in front of a weighted op)."""
        return max((c.weight_max for c in self.chains), default=0)

    def parameters(self) -> int:
        """Weights stored for the whole layer with sharing (kernels once per channel)."""
        c_out = self.shape[0] if len(self.shape) == 3 else self.units
        return sum(c.kernel * c_out if c.kind == "conv" else
                   int(c.rows.sum()) if c.kind == "dense" else c.folded_fanin * self.units
                   for c in self.chains)


@dataclass
class Demand:
    """What a slice of ``n`` units needs of one core (upper bounds)."""

    units: int
    compartments: int
    stored: int          # weights stored with sharing
    synapses: int        # non-zero synapses of the composed matrix
    shared_axons: int    # input axons with sharing (one per source channel for a conv)
    axons: int           # distinct presynaptic units (no sharing)


def _spatial(op: Node) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """(extent, stride) of one spatial op's window in its input grid."""
    if isinstance(op, Conv2dNode):
        kh, kw = op.weight.shape[2:]
        return ((kh - 1) * op.dilation[0] + 1, (kw - 1) * op.dilation[1] + 1), tuple(op.stride)
    if isinstance(op, (AvgPool2dNode, MaxPool2dNode)):
        return tuple(op.kernel), tuple(op.stride)
    return None


def _compose(rf, stride, ext, s):
    """Receptive field of an op of extent ``ext``/stride ``s`` placed after (rf, stride)."""
    return ((rf[0] + (ext[0] - 1) * stride[0], rf[1] + (ext[1] - 1) * stride[1]),
            (stride[0] * s[0], stride[1] * s[1]))


def _overlap(ops: list[Node]) -> int:
    """Most windows of the sum pools in ``ops`` one element can fall into (1 when they tile)."""
    k = 1
    for o in ops:
        if isinstance(o, AvgPool2dNode):
            k *= -(-o.kernel[0] // o.stride[0]) * -(-o.kernel[1] // o.stride[1])
    return k


def _pooled_kernel(w: np.ndarray, conv: Conv2dNode, pools: list[AvgPool2dNode]) -> np.ndarray:
    """A convolution's kernel composed with the sum pools after it (in the conv's input grid)."""
    k = w.astype(np.int64)
    step = tuple(conv.stride)
    if conv.dilation != (1, 1) and any(d != 1 for d in conv.dilation):
        dil = np.zeros(k.shape[:2] + tuple((k.shape[i + 2] - 1) * conv.dilation[i] + 1 for i in range(2)),
                       np.int64)
        dil[:, :, ::conv.dilation[0], ::conv.dilation[1]] = k
        k = dil
    for p in pools:
        (ph, pw), (sh, sw) = p.kernel, step
        out = np.zeros(k.shape[:2] + (k.shape[2] + (ph - 1) * sh, k.shape[3] + (pw - 1) * sw), np.int64)
        for y in range(ph):
            for x in range(pw):
                out[:, :, y * sh:y * sh + k.shape[2], x * sw:x * sw + k.shape[3]] += k
        k, step = out, (step[0] * p.stride[0], step[1] * p.stride[1])
    return k


def _reached(graph: Graph, src: str, steps: list, i: int, w: np.ndarray, groups: int) -> np.ndarray:
    """The weights of the conv/dense ``steps[i]`` that read what the chain brings (after a
    concat, only the columns of the chain's own input): ``w`` with the others zeroed."""
    reach = chain_counts(graph, src, steps[:i], nonzero=False) > 0
    if reach.all() or len(reach) != w.shape[1] * groups:
        return w
    per_group = w.shape[0] // groups
    idx = (np.arange(w.shape[0]) // per_group)[:, None] * w.shape[1] + np.arange(w.shape[1])
    return w * reach[idx].reshape(idx.shape + (1,) * (w.ndim - 2))


def _chain(graph: Graph, src: str, steps: list, last: Node | None) -> Chain:
    """Geometry of the chain ``steps`` (ops with ports, plus the population's own spatial
    node ``last``) from ``src``; a conv/dense after a concat counts only the weights that
    read this chain's input."""
    counts = chain_counts(graph, src, steps)
    chain = _geometry(graph, src, steps, last, int(counts.max(initial=0)))
    chain.counts = counts
    return chain


def _geometry(graph: Graph, src: str, steps: list, last: Node | None, folded: int) -> Chain:
    """The :class:`Chain` of :func:`_chain`, given its folded fan-in."""
    ops = [o for o, _ in steps]
    s_shape = tuple(int(d) for d in graph[src].shape)
    rf, stride = (1, 1), (1, 1)
    for op in ops + ([last] if last is not None else []):
        g = _spatial(op)
        if g is not None:
            rf, stride = _compose(rf, stride, *g)
    plain = len(s_shape) == 3 and not any(isinstance(o, (FlattenNode, ReshapeNode)) for o in ops)
    weighted = [o for o in ops if isinstance(o, WeightedNode)]
    wmax = 1
    for o in weighted:  # max(|w|) without an |w| copy of a large matrix
        v = np.asarray(weight_values(o))
        wmax *= max(int(v.max(initial=0)), -int(v.min(initial=0)))
    main = [o for o in weighted if not isinstance(o, AffineNode)]
    if not main and plain:  # pools, pads, adds, channel-wise scales: a depthwise kernel
        return Chain(src, s_shape, "conv", fanin=folded, folded_fanin=folded, kernel=folded,
                     rf=rf, stride=stride, src_channels=1, grouped=True, weight_max=wmax * _overlap(ops))
    if len(main) == 1:  # one conv or dense, with channel-wise scales around it
        w = main[0]
        i = ops.index(w)
        wv = _reached(graph, src, steps, i, np.asarray(weight_values(w)), getattr(w, "groups", 1))
        nz = wv.reshape(wv.shape[0], -1) != 0
        if isinstance(w, Conv2dNode) and plain:
            kernel = int(nz.sum(axis=1).max(initial=0))
            after = [o for o in ops[i + 1:] if isinstance(o, AvgPool2dNode)]
            if after:  # sum pools after the conv: one wider, strided kernel
                k = _pooled_kernel(wv, w, after)
                kernel = int((k.reshape(k.shape[0], -1) != 0).sum(axis=1).max(initial=0))
                wmax = wmax // max(1, int(np.abs(wv).max(initial=0))) * int(np.abs(k).max(initial=0))
            return Chain(src, s_shape, "conv", fanin=kernel, folded_fanin=folded, kernel=kernel,
                         rf=rf, stride=stride, src_channels=min(wv.shape[1], s_shape[0]),
                         grouped=w.groups > 1, weight_max=wmax * _overlap(ops[:i]))
        if isinstance(w, DenseNode) and all(isinstance(o, AffineNode) for o in ops[i + 1:]):
            rows = nz.sum(axis=1).astype(np.int64)
            return Chain(src, s_shape, "dense", fanin=int(rows.max(initial=0)), folded_fanin=folded,
                         rows=rows, axons=int(nz.any(axis=0).sum()), share=chain_fanin(ops[:i]),
                         weight_max=wmax * _overlap(ops[:i]))
    return Chain(src, s_shape, "folded", fanin=folded, folded_fanin=folded,
                 weight_max=wmax * chain_fanin([o for o in ops if isinstance(o, AvgPool2dNode)]))


def layer_footprints(graph: Graph) -> list[Footprint]:
    """Every layer that receives synapses (:func:`fanin_layers`), in graph order, with the
    geometry of its synapse chains and the number of chains its spikes feed."""
    out: list[Footprint] = []
    for name in fanin_layers(graph):
        n = graph[name]
        own = n if isinstance(n, MaxPool2dNode) else None
        slots = int(own.kernel[0] * own.kernel[1]) if own is not None else 1
        fp = Footprint(name, tuple(int(d) for d in n.shape), slots)
        fp.chains = [_chain(graph, src, steps, own) for src, steps in ported_chains(graph, name)]
        out.append(fp)
    by_name = {f.name: f for f in out}
    for f in out:
        for c in f.chains:
            if c.source in by_name:
                by_name[c.source].consumers += 1
    return out


def _rows_in(n_rows_out: int, rf: int, stride: int, limit: int) -> int:
    return min(limit, (n_rows_out - 1) * stride + rf)


def demand(fp: Footprint, n: int) -> Demand:
    """Upper bounds of what a slice of ``n`` consecutive units of ``fp`` needs."""
    n = max(1, min(n, fp.units))
    shape = fp.shape
    plane = int(np.prod(shape[1:])) if len(shape) == 3 else 1
    c_out = shape[0] if len(shape) == 3 else fp.units
    ch = min(c_out, (n - 1) // plane + 2) if n > 1 else 1       # channels a slice may span
    rows_out = shape[1] if len(shape) == 3 else 1     # output rows a slice may span
    if len(shape) == 3 and n < plane:  # a band of rows, or the ends of two channels' planes
        rows_out = min(shape[1], (n - 1) // shape[2] + 2) if n > 1 else 1
    stored = synapses = shared_axons = axons = 0
    for c in fp.chains:
        if c.kind == "dense":
            s = int(np.add.reduceat(c.rows, np.arange(0, len(c.rows), n)).max(initial=0))
            stored += s
            synapses += s * c.share
            shared_axons += c.axons
            axons += min(int(np.prod(c.source_shape)), c.axons * c.share)
            continue
        if c.kind == "conv":
            stored += ch * c.kernel
            synapses += n * fp.slots * c.folded_fanin
            src_c = min(c.source_shape[0], ch * c.src_channels) if c.grouped else c.source_shape[0]
            shared_axons += src_c
            if len(c.source_shape) == 3:
                _, h, w = c.source_shape
                cols = w                 # a slice shorter than a row: its columns only
                if len(shape) == 3 and n < shape[2]:
                    cols = min(w, c.rf[1] if n == 1 else (n - 1) * c.stride[1] + 2 * c.rf[1])
                rows = _rows_in(rows_out, c.rf[0] * (2 if ch > 1 else 1), c.stride[0], h)
                axons += src_c * rows * cols
            else:
                axons += int(np.prod(c.source_shape))
            continue
        stored += n * c.folded_fanin
        synapses += n * c.folded_fanin
        shared_axons += int(np.prod(c.source_shape))
        axons += int(np.prod(c.source_shape))
    return Demand(units=n, compartments=n * fp.slots, stored=stored, synapses=synapses,
                  shared_axons=shared_axons, axons=axons)


def largest_slice(fp: Footprint, fits) -> int:
    """The most consecutive units of ``fp`` one core holds (``fits(Demand) -> bool``);
    0 when not even one unit fits. Demands grow with the slice, so a bisection finds it."""
    if not fits(demand(fp, 1)):
        return 0
    lo, hi = 1, fp.units
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(demand(fp, mid)):
            lo = mid
        else:
            hi = mid - 1
    return lo
