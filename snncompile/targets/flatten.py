"""A graph as explicit populations and integer synapse matrices (a helper for backends).

Hardware does not run convolutions, pools, pads and concats: it runs neurons and synapses.
:func:`flatten_network` composes every chain of linear ops between two populations (the
analog input, IF layers, spike-count max pools, output accumulators; see
:mod:`snncompile.ir.structure`) into one sparse integer matrix per (source, target) pair, and the
biases along the chain into two per-unit vectors. A backend that knows neurons and synapses
can then lower any graph the reference simulator runs, and stay bit-exact: the composition
is exact integer arithmetic (scipy.sparse with int64).

Units of a population are its elements in row-major order. A max-pool population has
``slots`` compartments per unit, one per window position (``unit * slots + slot``); a
compartment of a window position in the zero padding has no synapses, so its running count
stays 0, as the reference simulator's zero padding does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import scipy.sparse as sp

from ..errors import ModelError
from ..ir import (AddNode, AffineNode, AvgPool2dNode, ConcatNode, Conv2dNode, DenseNode,
                 FlattenNode, Graph, IFNode, InputNode, MaxPool2dNode, Node, PadNode, ReshapeNode,
                 WeightedNode)

KINDS = ("input", "if", "maxpool", "output")


@dataclass
class Population:
    """One layer of units as hardware sees it.

    ``kind``: input (analog charge), if (integrate-and-fire), maxpool (spike-count max over
    ``slots`` compartments per unit) or output (non-spiking accumulator of node ``node``).
    ``threshold``/``v_init`` are per unit (IF only)."""

    name: str
    kind: str
    shape: tuple[int, ...]
    node: str = ""
    slots: int = 1
    threshold: np.ndarray | None = None
    v_init: np.ndarray | None = None
    reset: str = "subtract"
    spikes: str = "binary"          # "signed": IF units that can emit -1 (docs/semantics.md)
    membrane_bits: int = 32
    input_mode: str = "once"
    input_bits: int = 8

    @property
    def units(self) -> int:
        return int(np.prod(self.shape))

    @property
    def compartments(self) -> int:
        return self.units * self.slots


@dataclass
class Projection:
    """All synapses from ``source`` units to ``target`` compartments: ``matrix`` is
    (target compartments x source units), int64, CSR; entry [i, j] is the integer weight."""

    source: str
    target: str
    matrix: sp.csr_matrix


@dataclass
class FlatNetwork:
    """Populations in evaluation order, the projections into each, and each population's
    bias: ``bias_every[p]`` added every step, ``bias_first[p]`` times T added at t = 0."""

    populations: list[Population]
    projections: list[Projection]
    bias_every: dict[str, np.ndarray] = field(default_factory=dict)
    bias_first: dict[str, np.ndarray] = field(default_factory=dict)
    timesteps: int | None = None

    def population(self, name: str) -> Population:
        for p in self.populations:
            if p.name == name:
                return p
        raise KeyError(name)

    def into(self, target: str) -> list[Projection]:
        return [p for p in self.projections if p.target == target]


@dataclass
class _Form:
    """A node's output as a linear function of population outputs, plus bias terms."""

    mats: dict[str, sp.csr_matrix]
    every: np.ndarray
    first: np.ndarray

    def apply(self, m: sp.csr_matrix) -> "_Form":
        return _Form({k: (m @ v).tocsr() for k, v in self.mats.items()},
                     np.asarray(m @ self.every, dtype=np.int64), np.asarray(m @ self.first, dtype=np.int64))


def _identity_form(name: str, n: int) -> _Form:
    return _Form({name: sp.identity(n, dtype=np.int64, format="csr")},
                 np.zeros(n, np.int64), np.zeros(n, np.int64))


def _coo(data, rows, cols, shape) -> sp.csr_matrix:
    return sp.coo_matrix((np.asarray(data, np.int64), (rows, cols)), shape=shape).tocsr()


def _dense_matrix(n: DenseNode) -> sp.csr_matrix:
    return sp.csr_matrix(np.asarray(n.weight_int, np.int64))


def _conv_matrix(n: Conv2dNode, in_shape: tuple[int, ...]) -> sp.csr_matrix:
    return conv_matrix(np.asarray(n.weight_int, np.int64), tuple(n.stride), (n.padding[0], n.padding[1]),
                       tuple(n.dilation), n.groups, in_shape, tuple(n.shape))


def conv_matrix(w: np.ndarray, stride: tuple[int, int], pad: tuple[int, int], dilation: tuple[int, int],
                groups: int, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> sp.csr_matrix:
    """The (out units x in units) matrix of a zero-padded convolution with kernel ``w``
    (padding ``pad`` at the top and left; the output size says the rest)."""
    cout, cin_g, kh, kw = w.shape
    c_in, h, wd = in_shape
    _, ho, wo = out_shape
    co, ci, ky, kx = (a.ravel() for a in np.meshgrid(np.arange(cout), np.arange(cin_g), np.arange(kh),
                                                      np.arange(kw), indexing="ij"))
    wv = w[co, ci, ky, kx]
    nz = wv != 0
    co, ci, ky, kx, wv = co[nz], ci[nz], ky[nz], kx[nz], wv[nz]
    cin = (co // (cout // groups)) * cin_g + ci
    oy, ox = (a.ravel() for a in np.meshgrid(np.arange(ho), np.arange(wo), indexing="ij"))
    iy = oy[None, :] * stride[0] - pad[0] + ky[:, None] * dilation[0]
    ix = ox[None, :] * stride[1] - pad[1] + kx[:, None] * dilation[1]
    keep = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < wd)
    rows = (co[:, None] * ho + oy[None, :]) * wo + ox[None, :]
    cols = (cin[:, None] * h + iy) * wd + ix
    data = np.broadcast_to(wv[:, None], rows.shape)
    return _coo(data[keep], rows[keep], cols[keep], (cout * ho * wo, c_in * h * wd))


def _windows(n: AvgPool2dNode | MaxPool2dNode, in_shape: tuple[int, ...]):
    """Per (output unit, window slot): the input element index, and whether it is inside."""
    c, h, wd = in_shape
    _, ho, wo = n.shape
    kh, kw = n.kernel
    cc, oy, ox, ky, kx = (a.ravel() for a in np.meshgrid(np.arange(c), np.arange(ho), np.arange(wo),
                                                          np.arange(kh), np.arange(kw), indexing="ij"))
    iy = oy * n.stride[0] - n.padding[0] + ky
    ix = ox * n.stride[1] - n.padding[1] + kx
    inside = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < wd)
    unit = (cc * ho + oy) * wo + ox
    slot = ky * kw + kx
    return unit, slot, (cc * h + iy) * wd + ix, inside


def _sumpool_matrix(n: AvgPool2dNode, in_shape: tuple[int, ...]) -> sp.csr_matrix:
    unit, _, src, inside = _windows(n, in_shape)
    return _coo(np.ones(int(inside.sum())), unit[inside], src[inside],
                (int(np.prod(n.shape)), int(np.prod(in_shape))))


def _maxpool_slots(n: MaxPool2dNode, in_shape: tuple[int, ...]) -> sp.csr_matrix:
    """Selects, for every compartment (unit * slots + slot), its input element."""
    unit, slot, src, inside = _windows(n, in_shape)
    k = n.kernel[0] * n.kernel[1]
    comp = unit * k + slot
    return _coo(np.ones(int(inside.sum())), comp[inside], src[inside],
                (int(np.prod(n.shape)) * k, int(np.prod(in_shape))))


def _pad_matrix(n: PadNode, in_shape: tuple[int, ...]) -> sp.csr_matrix:
    k = len(in_shape)
    idx = np.arange(int(np.prod(n.shape))).reshape(n.shape)
    inner = idx[tuple(slice(n.pads[i], n.pads[i] + in_shape[i]) for i in range(k))]
    m = int(np.prod(in_shape))
    return _coo(np.ones(m), inner.ravel(), np.arange(m), (idx.size, m))


def _per_channel(values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    v = np.asarray(values, np.int64).reshape((-1,) + (1,) * (len(shape) - 1))
    return np.broadcast_to(v, shape).ravel()


def _bias(n: WeightedNode, size_shape: tuple[int, ...]) -> np.ndarray:
    if n.bias_int is None:
        return np.zeros(int(np.prod(size_shape)), np.int64)
    if isinstance(n, DenseNode):
        return np.asarray(n.bias_int, np.int64).ravel()
    return _per_channel(n.bias_int, size_shape)


def _sum_forms(forms: list[_Form], n: int) -> _Form:
    mats: dict[str, sp.csr_matrix] = {}
    every, first = np.zeros(n, np.int64), np.zeros(n, np.int64)
    for f in forms:
        for k, v in f.mats.items():
            mats[k] = (mats[k] + v).tocsr() if k in mats else v
        every = every + f.every
        first = first + f.first
    return _Form(mats, every, first)


def _node_form(g: Graph, n: Node, forms: dict[str, _Form]) -> _Form:
    size = int(np.prod(n.shape))
    if isinstance(n, WeightedNode):
        if n.weight_int is None:
            raise ModelError(f"node '{n.name}' has no integer weights: the graph is not converted",
                             "run 'snncompile convert' first")
        in_shape = tuple(g[n.inputs[0]].shape)
        if isinstance(n, DenseNode):
            m = _dense_matrix(n)
        elif isinstance(n, Conv2dNode):
            m = _conv_matrix(n, in_shape)
        else:  # AffineNode
            m = sp.diags(_per_channel(n.weight_int, tuple(n.shape))).tocsr().astype(np.int64)
        f = forms[n.inputs[0]].apply(m)
        b = _bias(n, tuple(n.shape))
        if n.bias_mode == "every_step":
            f.every = f.every + b
        else:
            f.first = f.first + b
        return f
    if isinstance(n, AvgPool2dNode):
        return forms[n.inputs[0]].apply(_sumpool_matrix(n, tuple(g[n.inputs[0]].shape)))
    if isinstance(n, PadNode):
        return forms[n.inputs[0]].apply(_pad_matrix(n, tuple(g[n.inputs[0]].shape)))
    if isinstance(n, (FlattenNode, ReshapeNode)):
        return forms[n.inputs[0]]
    if isinstance(n, AddNode):
        return _sum_forms([forms[i] for i in n.inputs], size)
    if isinstance(n, ConcatNode):
        idx = np.arange(size).reshape(n.shape)
        sizes = [g[i].shape[n.axis] for i in n.inputs]
        pieces = np.split(idx, np.cumsum(sizes)[:-1], axis=n.axis)
        parts = []
        for i, piece in zip(n.inputs, pieces):
            m_i = piece.size
            sel = _coo(np.ones(m_i), piece.ravel(), np.arange(m_i), (size, m_i))
            parts.append(forms[i].apply(sel))
        return _sum_forms(parts, size)
    raise ModelError(f"node '{n.name}' ({n.op}) cannot be lowered to neurons and synapses",
                     "convert the graph first ('snncompile convert')")


def _add_projections(net: FlatNetwork, target: str, form: _Form) -> None:
    for src, m in form.mats.items():
        m = m.tocsr()
        m.eliminate_zeros()
        m.sort_indices()
        net.projections.append(Projection(src, target, m))
    net.bias_every[target] = form.every.astype(np.int64)
    net.bias_first[target] = form.first.astype(np.int64)


def _per_unit(values: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    if values is None:
        return np.zeros(int(np.prod(shape)), np.int64)
    return np.broadcast_to(np.asarray(values, np.int64), shape).ravel().copy()


def flatten_network(graph: Graph, progress: Callable[[int, int, str], None] | None = None) -> FlatNetwork:
    """The populations and composed integer synapse matrices of a converted graph;
    ``progress(done, total, name)`` (a backend's lowering callback) after each population."""
    net = FlatNetwork([], [], timesteps=graph.timesteps)
    forms: dict[str, _Form] = {}
    total = sum(isinstance(n, (InputNode, IFNode, MaxPool2dNode)) for n in graph.nodes) + len(graph.outputs)
    for n in graph.nodes:
        if progress is not None and net.populations:
            progress(len(net.populations), total, net.populations[-1].name)
        shape = tuple(int(d) for d in n.shape)
        size = int(np.prod(shape))
        if isinstance(n, InputNode):
            net.populations.append(Population(n.name, "input", shape, node=n.name, input_mode=n.mode,
                                              input_bits=n.bits))
            forms[n.name] = _identity_form(n.name, size)
        elif isinstance(n, IFNode):
            net.populations.append(Population(
                n.name, "if", shape, node=n.name, threshold=_per_unit(n.threshold, shape),
                v_init=_per_unit(n.v_init, shape), reset=n.reset, membrane_bits=n.membrane_bits,
                spikes=n.spikes))
            _add_projections(net, n.name, forms[n.inputs[0]])
            forms[n.name] = _identity_form(n.name, size)
        elif isinstance(n, MaxPool2dNode):
            k = n.kernel[0] * n.kernel[1]
            net.populations.append(Population(n.name, "maxpool", shape, node=n.name, slots=k))
            sel = _maxpool_slots(n, tuple(graph[n.inputs[0]].shape))
            _add_projections(net, n.name, forms[n.inputs[0]].apply(sel))
            forms[n.name] = _identity_form(n.name, size)
        else:
            forms[n.name] = _node_form(graph, n, forms)
    names = {p.name for p in net.populations}
    for o in graph.outputs:
        name = o if o not in names else f"{o}.acc"
        shape = tuple(int(d) for d in graph[o].shape)
        net.populations.append(Population(name, "output", shape, node=o))
        _add_projections(net, name, forms[o])
        names.add(name)
    if progress is not None:
        progress(len(net.populations), total, "")
    return net
