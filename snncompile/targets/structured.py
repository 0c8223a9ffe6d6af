"""A graph as populations and *structured* projections: weight sharing kept (a helper for backends).

:func:`flatten_network` composes every chain of linear ops between two populations into one
sparse matrix: exact, but its size is the network's dense connection count (billions of
synapses for an ImageNet-size CNN). :func:`structured_network` composes the same chains
into operators that keep weight sharing, so a lowered network grows with its parameters:

- :class:`ConvOp`: a convolution (kernel stored once, stride, zero padding, dilation,
  groups). Pads, sum pools, per-channel affines and 1x1/identity steps are convolutions too,
  and two convolutions compose into one when the outer one reads no position where the inner
  one would see real input through its zero padding (so composing is exact).
- :class:`DenseOp`: a weight matrix, optionally after a ``pre`` operator through which every
  source unit reaches at most one of the matrix's inputs (a non-overlapping pool, a
  flatten), e.g. ResNet's global pool before its classifier.
- :class:`MatrixOp`: a sparse matrix, for whatever else (concats, max-pool windows, chains of
  unequal geometry): exactly :func:`flatten_network`'s matrix.

Every operator is a linear map from source units to target compartments whose matrix is
:meth:`to_matrix` (equal, entry for entry and zero for zero, to the composed matrix of
:func:`flatten_network`; tests check it). :meth:`apply` computes the map on values and
:meth:`pattern` counts, per target row, the nonzero entries of the matrix in active source
columns (synaptic events), both without building the matrix; :meth:`row_synapses` and
:meth:`axons` give the exact per-row and per-row-range synapse and distinct-source counts a
mapper needs. Arithmetic is exact integer arithmetic carried in float64 (|values| < 2^53).

Why one module: the three operators, their composition rules and the walk over the graph
are one contract (every operator equals its matrix, every composition is exact); split, a
rule in one file would silently depend on an invariant kept in another.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Union

import numpy as np
import scipy.sparse as sp

from ..errors import ModelError
from ..ir import (AddNode, AffineNode, AvgPool2dNode, ConcatNode, Conv2dNode, DenseNode, FlattenNode,
                  Graph, IFNode, InputNode, MaxPool2dNode, PadNode, ReshapeNode, WeightedNode)
from .flatten import Population, _maxpool_slots, _pad_matrix, _per_unit, conv_matrix

_CHUNK = 1 << 22  # matrix entries converted to float64 at a time (bounded memory for big dense layers)


def _torch():
    import torch  # noqa: PLC0415  (lazy: importing the plugin API must not import torch)
    return torch


@dataclass
class ConvOp:
    """``y = conv(x)`` from ``in_shape`` (C, H, W) to ``out_shape``: ``kernel`` [cout, cin /
    groups, kh, kw] int64, zero padding ``pad`` (top, left; the bottom/right padding is
    whatever the output size needs), ``stride``, ``dilation``, ``groups``."""

    kernel: np.ndarray
    stride: tuple[int, int]
    pad: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]

    kind = "conv"

    @property
    def n_in(self) -> int:
        return int(np.prod(self.in_shape))

    @property
    def n_out(self) -> int:
        return int(np.prod(self.out_shape))

    def _run(self, kernel: np.ndarray, values: np.ndarray) -> np.ndarray:
        torch = _torch()
        F = torch.nn.functional
        B = values.shape[0]
        c, h, w = self.in_shape
        co, ho, wo = self.out_shape
        kh, kw = kernel.shape[2:]
        (sy, sx), (dy, dx), (pt, pl) = self.stride, self.dilation, self.pad
        pb = max(0, (ho - 1) * sy + (kh - 1) * dy + 1 - h - pt)
        pr = max(0, (wo - 1) * sx + (kw - 1) * dx + 1 - w - pl)
        x = torch.from_numpy(np.ascontiguousarray(values, np.float64).reshape(B, c, h, w))
        x = F.pad(x, (pl, pr, pt, pb))
        y = F.conv2d(x, torch.from_numpy(np.ascontiguousarray(kernel, np.float64)), stride=self.stride,
                     dilation=self.dilation, groups=self.groups)
        return y[:, :, :ho, :wo].reshape(B, -1).numpy()

    def apply(self, values: np.ndarray) -> np.ndarray:
        """(B, n_in) -> (B, n_out) float64: the map on values."""
        return self._run(self.kernel, values)

    def _mask(self) -> np.ndarray:
        if getattr(self, "_mask_cache", None) is None:
            self._mask_cache = (self.kernel != 0).astype(np.float64)
        return self._mask_cache

    def pattern(self, active: np.ndarray) -> np.ndarray:
        """(B, n_in) 0/1 -> (B, n_out): per row, the nonzero entries in active columns."""
        return self._run(self._mask(), active)

    def row_synapses(self) -> np.ndarray:
        return np.rint(self.pattern(np.ones((1, self.n_in)))[0]).astype(np.int64)

    def axons(self, lo: int, hi: int) -> int:
        """Distinct source units with a synapse into rows [lo, hi)."""
        _, h, w = self.in_shape
        co, ho, wo = self.out_shape
        hw = ho * wo
        sy, (pt, pl) = self.stride[0], self.pad
        c_lo, c_hi = lo // hw, (hi - 1) // hw + 1
        y_lo, y_hi = (((lo % hw) // wo, ((hi - 1) % hw) // wo + 1) if c_hi - c_lo == 1 else (0, ho))
        ind = np.zeros((c_hi - c_lo) * hw)
        ind[lo - c_lo * hw:hi - c_lo * hw] = 1
        ind = ind.reshape(1, c_hi - c_lo, ho, wo)[:, :, y_lo:y_hi]
        mask = self._mask()
        per_group, cin_g = co // self.groups, self.kernel.shape[1]
        axons = 0  # groups read disjoint input channels: their counts add up
        for g in range(c_lo // per_group, (c_hi - 1) // per_group + 1):
            a, b = max(c_lo, g * per_group), min(c_hi, (g + 1) * per_group)
            r = _transposed(ind[:, a - c_lo:b - c_lo], mask[a:b], self.stride, self.dilation)
            r = r[0] != 0  # (cin_g, rows, cols) in padded coordinates from row y_lo * sy
            top, left = y_lo * sy - pt, -pl
            ys = slice(max(0, top), min(h, top + r.shape[1]))
            xs = slice(max(0, left), min(w, left + r.shape[2]))
            if ys.start < ys.stop and xs.start < xs.stop:
                axons += int(np.count_nonzero(r[:, ys.start - top:ys.stop - top, xs.start - left:xs.stop - left]))
        return axons

    def column_reach(self) -> np.ndarray:
        """Per source unit, how many target rows it reaches."""
        r = _transposed(np.ones((1,) + tuple(self.out_shape)), self._mask(), self.stride, self.dilation,
                        self.groups)[0]
        c, h, w = self.in_shape
        pt, pl = self.pad
        out = np.zeros((c, h, w))
        ys, xs = min(h, r.shape[1] - pt), min(w, r.shape[2] - pl)
        out[:, :ys, :xs] = r[:, pt:pt + ys, pl:pl + xs]
        return out.ravel()

    def to_matrix(self) -> sp.csr_matrix:
        return _clean(conv_matrix(self.kernel, self.stride, self.pad, self.dilation, self.groups, self.in_shape,
                                  self.out_shape))

    def meta(self) -> dict[str, Any]:
        return {"kind": self.kind, "stride": list(self.stride), "pad": list(self.pad),
                "dilation": list(self.dilation), "groups": self.groups, "in_shape": list(self.in_shape),
                "out_shape": list(self.out_shape)}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"kernel": narrow(self.kernel)}


def _transposed(y: np.ndarray, kernel: np.ndarray, stride: tuple[int, int], dilation: tuple[int, int],
                groups: int = 1) -> np.ndarray:
    """conv_transpose2d(y, kernel) (no padding), computed as a convolution of the
    zero-stuffed, padded ``y`` with the flipped kernel (torch's CPU transposed convolution
    is an order of magnitude slower on the small inputs a mapper gives it)."""
    torch = _torch()
    b, c, n, m = y.shape
    (sy, sx), (dy, dx) = stride, dilation
    kh, kw = kernel.shape[2:]
    py, px = (kh - 1) * dy, (kw - 1) * dx
    up = np.zeros((b, c, (n - 1) * sy + 1 + 2 * py, (m - 1) * sx + 1 + 2 * px))
    up[:, :, py:py + (n - 1) * sy + 1:sy, px:px + (m - 1) * sx + 1:sx] = y
    per, cin_g = kernel.shape[0] // groups, kernel.shape[1]
    k = np.flip(kernel, (2, 3)).reshape(groups, per, cin_g, kh, kw).transpose(0, 2, 1, 3, 4)
    k = np.ascontiguousarray(k.reshape(groups * cin_g, per, kh, kw))
    return torch.nn.functional.conv2d(torch.from_numpy(up), torch.from_numpy(k), dilation=dilation,
                                      groups=groups).numpy()


@dataclass
class DenseOp:
    """``y = weight @ pre(x)`` (``pre`` None: ``y = weight @ x``); ``pre`` reaches every
    source unit to at most one input of ``weight``."""

    weight: np.ndarray
    pre: "ConvOp | MatrixOp | None" = None

    kind = "dense"

    @property
    def n_in(self) -> int:
        return self.pre.n_in if self.pre is not None else int(self.weight.shape[1])

    @property
    def n_out(self) -> int:
        return int(self.weight.shape[0])

    def _mul(self, w: Callable[[np.ndarray], np.ndarray], z: np.ndarray) -> np.ndarray:
        out = np.empty((z.shape[0], self.n_out))
        step = max(1, _CHUNK // max(1, self.weight.shape[1]))
        for a in range(0, self.n_out, step):
            out[:, a:a + step] = z @ w(self.weight[a:a + step]).T
        return out

    def apply(self, values: np.ndarray) -> np.ndarray:
        z = self.pre.apply(values) if self.pre is not None else np.asarray(values, np.float64)
        return self._mul(lambda m: m.astype(np.float64), z)

    def pattern(self, active: np.ndarray) -> np.ndarray:
        z = self.pre.pattern(active) if self.pre is not None else np.asarray(active, np.float64)
        return self._mul(lambda m: (m != 0).astype(np.float64), z)

    def _pre_fanin(self) -> np.ndarray:
        if getattr(self, "_fanin_cache", None) is None:
            self._fanin_cache = (self.pre.row_synapses() if self.pre is not None
                                 else np.ones(self.weight.shape[1], np.int64))
        return self._fanin_cache

    def row_synapses(self) -> np.ndarray:
        return np.rint(self.pattern(np.ones((1, self.n_in)))[0]).astype(np.int64)

    def axons(self, lo: int, hi: int) -> int:
        used = (self.weight[lo:hi] != 0).any(axis=0)
        return int(self._pre_fanin()[used].sum())

    def to_matrix(self) -> sp.csr_matrix:
        w = sp.csr_matrix(np.asarray(self.weight, np.int64))
        return w if self.pre is None else _clean(w @ self.pre.to_matrix())

    def meta(self) -> dict[str, Any]:
        return {"kind": self.kind, "pre": self.pre.meta() if self.pre is not None else None}

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"weight": narrow(self.weight)}
        if self.pre is not None:
            out.update({f"pre.{k}": v for k, v in self.pre.arrays().items()})
        return out


@dataclass
class MatrixOp:
    """Explicit synapses: ``matrix`` (n_out x n_in) int64 CSR, no explicit zeros."""

    matrix: sp.csr_matrix

    kind = "matrix"

    @property
    def n_in(self) -> int:
        return int(self.matrix.shape[1])

    @property
    def n_out(self) -> int:
        return int(self.matrix.shape[0])

    def apply(self, values: np.ndarray) -> np.ndarray:
        return np.asarray(self.matrix.astype(np.float64) @ np.asarray(values, np.float64).T).T

    def pattern(self, active: np.ndarray) -> np.ndarray:
        if getattr(self, "_ones", None) is None:
            self._ones = self.matrix.astype(np.float64)
            self._ones.data[:] = 1.0
        return np.asarray(self._ones @ np.asarray(active, np.float64).T).T

    def row_synapses(self) -> np.ndarray:
        return np.diff(self.matrix.indptr).astype(np.int64)

    def axons(self, lo: int, hi: int) -> int:
        return int(np.unique(self.matrix[lo:hi].indices).size)

    def column_reach(self) -> np.ndarray:
        return np.bincount(self.matrix.indices, minlength=self.n_in).astype(np.float64)

    def to_matrix(self) -> sp.csr_matrix:
        return self.matrix

    def meta(self) -> dict[str, Any]:
        return {"kind": self.kind, "shape": [self.n_out, self.n_in]}

    def arrays(self) -> dict[str, np.ndarray]:
        m = self.matrix
        return {"indptr": narrow(m.indptr), "indices": narrow(m.indices), "data": narrow(m.data)}


Op = Union[ConvOp, DenseOp, MatrixOp]


def narrow(a: np.ndarray) -> np.ndarray:
    """The narrowest signed integer type that holds ``a`` (readers widen as they like)."""
    a = np.asarray(a)
    if not np.issubdtype(a.dtype, np.integer):
        a = np.rint(a).astype(np.int64)
    lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
    for t in (np.int8, np.int16, np.int32):
        if np.iinfo(t).min <= lo and hi <= np.iinfo(t).max:
            return a.astype(t, copy=False)
    return a.astype(np.int64, copy=False)


def op_from(meta: dict[str, Any], arrays: Callable[[str], np.ndarray]) -> Op:
    """An operator from :meth:`meta` and its arrays (``arrays(key)``), as written by a backend;
    ValueError/KeyError/TypeError when they do not fit together."""
    kind = meta["kind"]
    if kind == "conv":
        k = np.asarray(arrays("kernel"), np.int64)
        op = ConvOp(k, _pair(meta["stride"]), _pair(meta["pad"], 0), _pair(meta["dilation"]), int(meta["groups"]),
                    _triple(meta["in_shape"]), _triple(meta["out_shape"]))
        _check_conv(op)
        return op
    if kind == "dense":
        w = np.asarray(arrays("weight"))
        if w.ndim != 2 or not np.issubdtype(w.dtype, np.integer):
            raise ValueError(f"dense weight must be a 2-D integer array, got {w.dtype} {w.shape}")
        pre = op_from(meta["pre"], lambda k: arrays(f"pre.{k}")) if meta.get("pre") else None
        if pre is not None and pre.n_out != w.shape[1]:
            raise ValueError(f"dense weight takes {w.shape[1]} inputs, its pre operator gives {pre.n_out}")
        return DenseOp(w, pre)
    if kind == "matrix":
        n_out, n_in = (int(v) for v in meta["shape"])
        indptr, indices = np.asarray(arrays("indptr"), np.int64), np.asarray(arrays("indices"), np.int64)
        data = np.asarray(arrays("data"), np.int64)
        if indptr.shape != (n_out + 1,) or indices.shape != data.shape or int(indptr[-1]) != data.size \
                or (indices.size and (int(indices.min()) < 0 or int(indices.max()) >= n_in)) \
                or np.any(np.diff(indptr) < 0) or int(indptr[0]) != 0:
            raise ValueError("matrix arrays (indptr, indices, data) do not form a CSR matrix of its shape")
        return MatrixOp(sp.csr_matrix((data, indices, indptr), shape=(n_out, n_in)))
    raise ValueError(f"unknown projection kind {kind!r}")


def _pair(v: Any, least: int = 1) -> tuple[int, int]:
    a, b = (int(x) for x in v)
    if isinstance(v[0], bool) or a < least or b < least or len(v) != 2:
        raise ValueError(f"expected two integers >= {least}, got {v!r}")
    return a, b


def _triple(v: Any) -> tuple[int, int, int]:
    t = tuple(int(x) for x in v)
    if len(t) != 3 or min(t) < 1:
        raise ValueError(f"expected a shape (C, H, W), got {v!r}")
    return t  # type: ignore[return-value]


def _check_conv(op: ConvOp) -> None:
    k = op.kernel
    c, h, w = op.in_shape
    co, ho, wo = op.out_shape
    if k.ndim != 4 or k.shape[0] != co or op.groups < 1 or c % op.groups or co % op.groups \
            or k.shape[1] != c // op.groups or min(k.shape) < 1:
        raise ValueError(f"conv kernel {k.shape} does not fit {op.in_shape} -> {op.out_shape} "
                         f"with {op.groups} groups")


def _csr(data, rows, cols, shape) -> sp.csr_matrix:
    return _clean(sp.coo_matrix((np.asarray(data, np.int64), (rows, cols)), shape=shape).tocsr())


def _clean(m: sp.spmatrix) -> sp.csr_matrix:
    m = sp.csr_matrix(m, dtype=np.int64)
    m.eliminate_zeros()
    m.sort_indices()
    return m


# --- composition -------------------------------------------------------------------------------

def _identity(shape: tuple[int, ...]) -> Op:
    if len(shape) == 3:
        c = shape[0]
        return ConvOp(np.ones((c, 1, 1, 1), np.int64), (1, 1), (0, 0), (1, 1), c, shape, shape)
    n = int(np.prod(shape))
    return MatrixOp(sp.identity(n, dtype=np.int64, format="csr"))


def _is_identity(op: Op) -> bool:
    if isinstance(op, ConvOp):
        return (op.in_shape == op.out_shape and op.kernel.shape[1:] == (1, 1, 1) and op.groups == op.in_shape[0]
                and op.stride == (1, 1) and op.pad == (0, 0) and bool(np.all(op.kernel == 1)))
    if isinstance(op, MatrixOp):
        m = op.matrix
        return (m.shape[0] == m.shape[1] and m.nnz == m.shape[0]
                and np.array_equal(m.indices, np.arange(m.shape[0])) and bool(np.all(m.data == 1)))
    return False


def _reads_only_padding(inner: ConvOp, outer: ConvOp) -> bool:
    """Whether every position of ``inner``'s output that ``outer`` reads outside its range
    (through its own zero padding) would see only ``inner``'s zero padding (so is 0 there too)."""
    for ax in (0, 1):
        n_in, n_mid = inner.in_shape[1 + ax], inner.out_shape[1 + ax]
        s, d, p, k = inner.stride[ax], inner.dilation[ax], inner.pad[ax], inner.kernel.shape[2 + ax]
        first = -outer.pad[ax]
        last = (outer.out_shape[1 + ax] - 1) * outer.stride[ax] - outer.pad[ax] \
            + (outer.kernel.shape[2 + ax] - 1) * outer.dilation[ax]
        if first < 0 and -s - p + (k - 1) * d >= 0:   # output row -1 reads real input
            return False
        if last >= n_mid and n_mid * s - p < n_in:     # output row n_mid reads real input
            return False
    return True


def _compose_conv(outer: ConvOp, inner: ConvOp) -> ConvOp | None:
    """One convolution equal to ``outer`` after ``inner``, or None when not exact/supported."""
    if inner.out_shape != outer.in_shape or not _reads_only_padding(inner, outer):
        return None
    ko, ki = outer.kernel, inner.kernel
    cmid = inner.out_shape[0]
    if outer.groups == cmid and ko.shape[1] == 1 and ko.shape[0] == cmid:       # outer depthwise
        groups, combine = inner.groups, lambda tap, kin: tap[:, 0][:, None, None, None] * kin
    elif inner.groups == cmid and ki.shape[1] == 1 and inner.in_shape[0] == cmid:  # inner depthwise
        per, cin_g = outer.out_shape[0] // outer.groups, ko.shape[1]
        mid = (np.arange(ko.shape[0])[:, None] // per) * cin_g + np.arange(cin_g)[None, :]
        groups, combine = outer.groups, lambda tap, kin: tap[:, :, None, None] * kin[mid, 0]
    elif outer.groups == 1 and inner.groups == 1:
        groups, combine = 1, lambda tap, kin: np.einsum("cm,mihw->cihw", tap, kin)
    else:
        return None
    pointwise = ki.shape[2:] == (1, 1) and inner.stride == (1, 1) and inner.pad == (0, 0)
    if pointwise:  # keep the outer geometry (its dilation too)
        k = None
        for ay in range(ko.shape[2]):
            for ax in range(ko.shape[3]):
                part = combine(ko[:, :, ay, ax], ki)[:, :, 0, 0]
                if k is None:
                    k = np.zeros(part.shape + ko.shape[2:], np.int64)
                k[:, :, ay, ax] = part
        return ConvOp(k, outer.stride, outer.pad, outer.dilation, groups, inner.in_shape, outer.out_shape)
    (si_y, si_x), (di_y, di_x) = inner.stride, inner.dilation
    span = [(ki.shape[2] - 1) * di_y + 1, (ki.shape[3] - 1) * di_x + 1]
    kin = np.zeros(ki.shape[:2] + tuple(span), np.int64)
    kin[:, :, ::di_y, ::di_x] = ki
    size = ((ko.shape[2] - 1) * outer.dilation[0] * si_y + span[0],
            (ko.shape[3] - 1) * outer.dilation[1] * si_x + span[1])
    k = None
    for ay in range(ko.shape[2]):
        for ax in range(ko.shape[3]):
            part = combine(ko[:, :, ay, ax], kin)
            if k is None:
                k = np.zeros(part.shape[:2] + size, np.int64)
            oy, ox = ay * outer.dilation[0] * si_y, ax * outer.dilation[1] * si_x
            k[:, :, oy:oy + span[0], ox:ox + span[1]] += part
    stride = (si_y * outer.stride[0], si_x * outer.stride[1])
    pad = (inner.pad[0] + outer.pad[0] * si_y, inner.pad[1] + outer.pad[1] * si_x)
    return ConvOp(k, stride, pad, (1, 1), groups, inner.in_shape, outer.out_shape)


def _single_path(op: Op) -> bool:
    """Whether every source unit reaches at most one target row (so a dense layer after it
    keeps one synapse per (target, source) pair through it, with no cancellation)."""
    if isinstance(op, (ConvOp, MatrixOp)):
        return bool(op.column_reach().max(initial=0) <= 1)
    return False


def compose(outer: Op, inner: Op) -> Op:
    """The operator ``outer`` after ``inner`` (structured where exact, else a matrix)."""
    if _is_identity(inner):
        return outer
    if _is_identity(outer):
        return inner
    if isinstance(outer, ConvOp) and isinstance(inner, ConvOp):
        c = _compose_conv(outer, inner)
        if c is not None:
            return c
    if isinstance(outer, DenseOp) and outer.pre is None and isinstance(inner, (ConvOp, MatrixOp)) \
            and _single_path(inner):
        return DenseOp(outer.weight, inner)
    return MatrixOp(_clean(outer.to_matrix() @ inner.to_matrix()))


def add_ops(a: Op, b: Op) -> Op:
    """The sum of two operators on the same source (one convolution when their geometry allows)."""
    if isinstance(a, ConvOp) and isinstance(b, ConvOp) and a.in_shape == b.in_shape and a.out_shape == b.out_shape \
            and a.stride == b.stride and a.dilation == b.dilation == (1, 1) and a.groups == b.groups:
        lo = [min(-a.pad[i], -b.pad[i]) for i in (0, 1)]
        hi = [max(a.kernel.shape[2 + i] - 1 - a.pad[i], b.kernel.shape[2 + i] - 1 - b.pad[i]) for i in (0, 1)]
        k = np.zeros(a.kernel.shape[:2] + (hi[0] - lo[0] + 1, hi[1] - lo[1] + 1), np.int64)
        for op in (a, b):
            y, x = -op.pad[0] - lo[0], -op.pad[1] - lo[1]
            k[:, :, y:y + op.kernel.shape[2], x:x + op.kernel.shape[3]] += op.kernel
        return ConvOp(k, a.stride, (-lo[0], -lo[1]), (1, 1), a.groups, a.in_shape, a.out_shape)
    return MatrixOp(_clean(a.to_matrix() + b.to_matrix()))


@dataclass
class _Form:
    ops: dict[str, Op]
    every: np.ndarray
    first: np.ndarray


def _node_op(g: Graph, n) -> Op:
    """A linear node's own operator (from its input's units to its output's)."""
    in_shape = tuple(int(d) for d in g[n.inputs[0]].shape)
    shape = tuple(int(d) for d in n.shape)
    if isinstance(n, Conv2dNode):
        return ConvOp(np.asarray(n.weight_int, np.int64), tuple(n.stride), (n.padding[0], n.padding[1]),
                      tuple(n.dilation), n.groups, in_shape, shape)
    if isinstance(n, DenseNode):
        return DenseOp(narrow(np.asarray(n.weight_int)))  # no int64 copy: VGG's fc1 has 103 M weights
    if isinstance(n, AffineNode):
        w = np.asarray(n.weight_int, np.int64).ravel()
        if len(shape) == 3:
            return ConvOp(w.reshape(-1, 1, 1, 1), (1, 1), (0, 0), (1, 1), shape[0], in_shape, shape)
        return MatrixOp(_clean(sp.diags(np.broadcast_to(w, shape).ravel())))
    if isinstance(n, AvgPool2dNode):
        c = shape[0]
        return ConvOp(np.ones((c, 1) + tuple(n.kernel), np.int64), tuple(n.stride), (n.padding[0], n.padding[1]),
                      (1, 1), c, in_shape, shape)
    if isinstance(n, PadNode):
        return MatrixOp(_clean(_pad_matrix(n, in_shape)))  # a pad widens its output: a matrix
    raise ModelError(f"node '{n.name}' ({n.op}) cannot be lowered to neurons and synapses",
                     "convert the graph first ('snncompile convert')")


def _apply_vec(op: Op, v: np.ndarray) -> np.ndarray:
    if not np.any(v):
        return np.zeros(op.n_out, np.int64)
    return np.rint(op.apply(v[None, :].astype(np.float64))[0]).astype(np.int64)


def _node_form(g: Graph, n, forms: dict[str, _Form], pads: dict[str, tuple[str, PadNode]]) -> _Form:
    size = int(np.prod(n.shape))
    if isinstance(n, Conv2dNode) and n.inputs[0] in pads:
        # a spatial zero pad before a convolution: the convolution's own padding
        src, pn = pads[n.inputs[0]]
        f = forms[src]
        own = _node_op(g, n)
        own = ConvOp(own.kernel, own.stride, (own.pad[0] + pn.pads[1], own.pad[1] + pn.pads[2]), own.dilation,
                     own.groups, tuple(int(d) for d in g[src].shape), own.out_shape)
    else:
        f = forms[n.inputs[0]] if n.inputs else None
    if isinstance(n, (Conv2dNode, DenseNode, AffineNode, AvgPool2dNode, PadNode)):
        if not (isinstance(n, Conv2dNode) and n.inputs[0] in pads):
            own = _node_op(g, n)
        out = _Form({k: compose(own, v) for k, v in f.ops.items()}, _apply_vec(own, f.every), _apply_vec(own, f.first))
        if isinstance(n, WeightedNode):
            if n.bias_int is not None:
                b = (np.asarray(n.bias_int, np.int64).ravel() if isinstance(n, DenseNode)
                     else np.broadcast_to(np.asarray(n.bias_int, np.int64).reshape((-1,) + (1,) * (len(n.shape) - 1)),
                                          tuple(n.shape)).ravel())
                if n.bias_mode == "every_step":
                    out.every = out.every + b
                else:
                    out.first = out.first + b
        return out
    if isinstance(n, (FlattenNode, ReshapeNode)):
        return f
    if isinstance(n, AddNode):
        return _sum_forms([forms[i] for i in n.inputs], size)
    if isinstance(n, ConcatNode):
        idx = np.arange(size).reshape(n.shape)
        sizes = [g[i].shape[n.axis] for i in n.inputs]
        parts = []
        for i, piece in zip(n.inputs, np.split(idx, np.cumsum(sizes)[:-1], axis=n.axis)):
            sel = MatrixOp(_csr(np.ones(piece.size), piece.ravel(), np.arange(piece.size), (size, piece.size)))
            fi = forms[i]
            parts.append(_Form({k: compose(sel, v) for k, v in fi.ops.items()}, _apply_vec(sel, fi.every),
                               _apply_vec(sel, fi.first)))
        return _sum_forms(parts, size)
    raise ModelError(f"node '{n.name}' ({n.op}) cannot be lowered to neurons and synapses",
                     "convert the graph first ('snncompile convert')")


def _sum_forms(forms: list[_Form], n: int) -> _Form:
    ops: dict[str, Op] = {}
    every, first = np.zeros(n, np.int64), np.zeros(n, np.int64)
    for f in forms:
        for k, v in f.ops.items():
            ops[k] = add_ops(ops[k], v) if k in ops else v
        every = every + f.every
        first = first + f.first
    return _Form(ops, every, first)


@dataclass
class StructuredProjection:
    """All synapses from ``source`` units to ``target`` compartments, as an operator."""

    source: str
    target: str
    op: Op

    @property
    def synapses(self) -> int:
        return int(self.op.row_synapses().sum())


@dataclass
class StructuredNetwork:
    """:class:`FlatNetwork`'s populations and biases, with structured projections."""

    populations: list[Population]
    projections: list[StructuredProjection]
    bias_every: dict[str, np.ndarray]
    bias_first: dict[str, np.ndarray]
    timesteps: int | None = None

    def population(self, name: str) -> Population:
        return next(p for p in self.populations if p.name == name)

    def into(self, target: str) -> list[StructuredProjection]:
        return [p for p in self.projections if p.target == target]


def structured_network(graph: Graph, progress: Callable[[int, int, str], None] | None = None) -> StructuredNetwork:
    """The populations of :func:`flatten_network` with projections that keep weight sharing;
    ``progress(done, total, name)`` after each population."""
    net = StructuredNetwork([], [], {}, {}, timesteps=graph.timesteps)
    forms: dict[str, _Form] = {}
    pads: dict[str, tuple[str, PadNode]] = {}
    total = sum(isinstance(n, (InputNode, IFNode, MaxPool2dNode)) for n in graph.nodes) + len(graph.outputs)

    def target(name: str, form: _Form) -> None:
        for src, op in form.ops.items():
            net.projections.append(StructuredProjection(src, name, op))
        net.bias_every[name] = form.every.astype(np.int64)
        net.bias_first[name] = form.first.astype(np.int64)

    for n in graph.nodes:
        if progress is not None and net.populations:
            progress(len(net.populations), total, net.populations[-1].name)
        shape = tuple(int(d) for d in n.shape)
        if isinstance(n, InputNode):
            net.populations.append(Population(n.name, "input", shape, node=n.name, input_mode=n.mode,
                                              input_bits=n.bits))
            forms[n.name] = _Form({n.name: _identity(shape)}, np.zeros(int(np.prod(shape)), np.int64),
                                  np.zeros(int(np.prod(shape)), np.int64))
        elif isinstance(n, IFNode):
            net.populations.append(Population(
                n.name, "if", shape, node=n.name, threshold=_per_unit(n.threshold, shape),
                v_init=_per_unit(n.v_init, shape), reset=n.reset, membrane_bits=n.membrane_bits,
                spikes=n.spikes))
            target(n.name, forms[n.inputs[0]])
            forms[n.name] = _Form({n.name: _identity(shape)}, np.zeros(int(np.prod(shape)), np.int64),
                                  np.zeros(int(np.prod(shape)), np.int64))
        elif isinstance(n, MaxPool2dNode):
            k = n.kernel[0] * n.kernel[1]
            net.populations.append(Population(n.name, "maxpool", shape, node=n.name, slots=k))
            sel = MatrixOp(_clean(_maxpool_slots(n, tuple(int(d) for d in graph[n.inputs[0]].shape))))
            f = forms[n.inputs[0]]
            target(n.name, _Form({s: compose(sel, v) for s, v in f.ops.items()}, _apply_vec(sel, f.every),
                                 _apply_vec(sel, f.first)))
            forms[n.name] = _Form({n.name: _identity(shape)}, np.zeros(int(np.prod(shape)), np.int64),
                                  np.zeros(int(np.prod(shape)), np.int64))
        else:
            if isinstance(n, PadNode) and len(shape) == 3 and n.pads[0] == 0 and n.pads[3] == 0 \
                    and n.name not in graph.outputs \
                    and all(isinstance(graph[c], Conv2dNode) for c in _consumers(graph, n.name)):
                pads[n.name] = (n.inputs[0], n)  # folded into the convolutions that read it
                continue
            forms[n.name] = _node_form(graph, n, forms, pads)
    names = {p.name for p in net.populations}
    for o in graph.outputs:
        name = o if o not in names else f"{o}.acc"
        shape = tuple(int(d) for d in graph[o].shape)
        net.populations.append(Population(name, "output", shape, node=o))
        target(name, forms[o])
        names.add(name)
    if progress is not None:
        progress(len(net.populations), total, "")
    return net


def _consumers(graph: Graph, name: str) -> list[str]:
    return [m.name for m in graph.nodes if name in getattr(m, "inputs", ())]
