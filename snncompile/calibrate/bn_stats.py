"""Activation scales without calibration data, from the model's BatchNorm statistics.

A BatchNorm in inference mode normalizes its input with the training data's running mean
and variance, then scales by ``gamma`` and shifts by ``beta``: over the training data each
channel c of its output has mean ``beta_c`` and standard deviation ``|gamma_c|``. Modelling
that channel as Normal(beta_c, gamma_c^2), as data-free quantization does (Nagel et al.,
ICCV 2019, "Data-Free Quantization"; ZeroQ, CVPR 2020, matches the same statistics), the
ReLU after it outputs a rectified (or, for ReLU6, clipped) Normal, whose high quantile
stands in for the percentile of calibrated conversion.

Layers with no BatchNorm right before their ReLU (after an Add, after pooling, a last
hidden layer) get moments propagated from the nearest BatchNorm statistics through the
graph: weighted sums and adds as sums of independent terms (mean W mu + b, variance
W^2 sigma^2), average pooling as a mean of independent values, max pooling as the maximum of
k independent Normals, ReLUs by the rectified Normal's moments. A layer that no BatchNorm
statistic reaches (it depends on the network input alone) takes its scale from synthetic
inputs (:func:`~.statistics.synthetic_scales`), not from a weight bound, which is far
larger and overflows float32 on deep networks.
docs/semantics.md ("Thresholds without calibration data") states the rule and how far it
is from calibrated thresholds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from ..ir import (AddNode, AffineNode, AvgPool2dNode, ConcatNode, Conv2dNode, DenseNode, FlattenNode,
                  Graph, MaxPool2dNode, PadNode, ReluNode, ReshapeNode)
from .statistics import NORM_MODES, SYNTHETIC_PERCENTILE, Calibration, synthetic_scales

log = logging.getLogger("snncompile")

# Standard normal grid for the moments of rectified/clipped Normals and of maxima.
_Z = np.linspace(-8.0, 8.0, 1601)
_PHI = np.exp(-0.5 * _Z ** 2) / np.sqrt(2 * np.pi)
_PHI /= _PHI.sum()
# The quantile a "max" normalization maps to (a Normal has no maximum).
MAX_QUANTILE = 99.99
# Measured (docs/results.md, "Thresholds without calibration data"): the ratio of
# BN-statistics thresholds to calibrated 99.9th percentiles on three BN networks.
EXPECTED_GAP = ("on BN networks measured here they were 0.7 to 1.25 times calibrated thresholds "
                "(accuracy at T=16 within 5 pp of calibrated conversion)")


@dataclass
class _Moments:
    """Per-channel (or per-feature, for vectors) mean and variance of a tensor."""

    mean: np.ndarray
    var: np.ndarray


def bn_output_stats(model: onnx.ModelProto) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """ONNX tensor -> (beta, |gamma|) for the output of every inference-mode BatchNorm whose
    parameters are constants."""
    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for n in model.graph.node:  # torch's exporter without constant folding wraps them in Identity
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
        elif n.op_type == "Identity" and n.input and n.input[0] in consts:
            consts[n.output[0]] = consts[n.input[0]]
    out = {}
    for n in model.graph.node:
        if n.op_type == "BatchNormalization" and len(n.input) >= 3 and n.input[1] in consts \
                and n.input[2] in consts:
            gamma = np.abs(np.asarray(consts[n.input[1]], np.float64).reshape(-1))
            beta = np.asarray(consts[n.input[2]], np.float64).reshape(-1)
            out[n.output[0]] = (beta, gamma)
    return out


def _rectified(m: _Moments, top: float | None) -> _Moments:
    """Moments of clip(X, 0, top) for X ~ Normal(mean, var), per channel."""
    sd = np.sqrt(np.maximum(m.var, 0.0))
    x = m.mean[:, None] + sd[:, None] * _Z[None, :]
    x = np.clip(x, 0.0, np.inf if top is None else top)
    mean = x @ _PHI
    return _Moments(mean, np.maximum((x * x) @ _PHI - mean ** 2, 0.0))


def _max_of(k: int) -> tuple[float, float]:
    """Mean and variance of the maximum of k independent standard Normals."""
    cdf = np.cumsum(_PHI)
    dens = k * cdf ** (k - 1) * _PHI
    dens /= dens.sum()
    mu = float(_Z @ dens)
    return mu, float((_Z - mu) ** 2 @ dens)


def _weighted(n, m: _Moments) -> _Moments:
    """Moments after a Conv2d/Dense/Affine, its inputs taken as independent."""
    w = np.asarray(n.weight, np.float64)
    b = np.zeros(w.shape[0]) if n.bias is None else np.asarray(n.bias, np.float64).reshape(-1)
    if isinstance(n, AffineNode):
        mean, var = np.broadcast_to(m.mean, w.shape), np.broadcast_to(m.var, w.shape)
        return _Moments(w * mean + b, w * w * var)
    if isinstance(n, DenseNode):
        return _Moments(w @ m.mean + b, (w * w) @ m.var)
    cout, cin_g = w.shape[:2]
    groups = n.groups
    idx = (np.arange(cout) // (cout // groups))[:, None] * cin_g + np.arange(cin_g)[None, :]
    mu_in, var_in = m.mean[idx], m.var[idx]  # (cout, cin_g)
    return _Moments((w.sum(axis=(2, 3)) * mu_in).sum(axis=1) + b,
                    ((w * w).sum(axis=(2, 3)) * var_in).sum(axis=1))


def propagate(graph: Graph, stats: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, _Moments]:
    """Moments of every node that BatchNorm statistics reach (see the module docstring);
    nodes they do not reach are absent."""
    mom: dict[str, _Moments] = {}
    for n in graph.nodes:
        if n.name in stats and n.op in ("conv2d", "dense", "affine"):
            beta, gamma = stats[n.name]
            c = n.shape[0]
            if beta.size in (1, c):
                mom[n.name] = _Moments(np.broadcast_to(beta, (c,)).copy(), np.broadcast_to(gamma, (c,)) ** 2)
                continue
        ins = [mom.get(i) for i in n.inputs]
        if not ins or any(m is None for m in ins):
            continue
        m = ins[0]
        if isinstance(n, (Conv2dNode, DenseNode, AffineNode)):
            mom[n.name] = _weighted(n, m)
        elif isinstance(n, ReluNode):
            mom[n.name] = _rectified(m, n.max_value)
        elif isinstance(n, AddNode):
            mom[n.name] = _Moments(sum(x.mean for x in ins), sum(x.var for x in ins))
        elif isinstance(n, AvgPool2dNode):
            k = n.kernel[0] * n.kernel[1]
            mom[n.name] = _Moments(m.mean, m.var / k)
        elif isinstance(n, MaxPool2dNode):
            mu, var = _max_of(n.kernel[0] * n.kernel[1])
            sd = np.sqrt(m.var)
            mom[n.name] = _Moments(m.mean + mu * sd, m.var * var)
        elif isinstance(n, PadNode):
            mom[n.name] = m
        elif isinstance(n, ConcatNode) and n.axis == 0:
            mom[n.name] = _Moments(np.concatenate([x.mean for x in ins]), np.concatenate([x.var for x in ins]))
        elif isinstance(n, (FlattenNode, ReshapeNode)) and len(n.shape) == 1:
            src = graph[n.inputs[0]].shape
            rep = int(np.prod(src[1:])) if len(src) > 1 else 1
            mom[n.name] = _Moments(np.repeat(m.mean, rep), np.repeat(m.var, rep))
    return mom


def _mixture_quantile(m: _Moments, q: float, top: float | None) -> float:
    """The q-quantile (0..1) of clip(X, 0, top), X an equal mixture of the channels' Normals."""
    sd = np.sqrt(np.maximum(m.var, 1e-24))

    def cdf(x: float) -> float:
        from math import erf
        z = (x - m.mean) / sd
        return float(np.mean(0.5 * (1 + np.vectorize(erf)(z / np.sqrt(2)))))

    hi = float(np.max(m.mean + 9 * sd))
    if hi <= 0:
        return 0.0
    lo = 0.0
    if cdf(lo) >= q:
        return 0.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if cdf(mid) < q else (lo, mid)
    x = 0.5 * (lo + hi)
    return min(x, top) if top is not None else x


def _z(q: float) -> float:
    """Standard normal quantile (bisection on erf, to stay within numpy)."""
    from math import erf, sqrt
    lo, hi = -9.0, 9.0
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if 0.5 * (1 + erf(mid / sqrt(2))) < q else (lo, mid)
    return 0.5 * (lo + hi)


def bn_scales(model: onnx.ModelProto, graph: Graph, norm: str = "percentile",
              percentile: float = 99.9, seed: int = 0) -> Calibration | None:
    """Scales of every ReLU from BatchNorm statistics (synthetic inputs where none reach,
    seeded by ``seed``), or None when the model has no BatchNorm whose statistics reach any
    ReLU."""
    if norm not in NORM_MODES:
        norm = "percentile"
    stats = bn_output_stats(model)
    if not stats:
        return None
    mom = propagate(graph, stats)
    relus = [n for n in graph.nodes if isinstance(n, ReluNode)]
    if not any(r.inputs[0] in mom for r in relus):
        return None
    q = (MAX_QUANTILE if norm == "max" else percentile) / 100.0
    fallback: dict[str, np.ndarray] = {}
    lam: dict[str, np.ndarray] = {}
    kinds: dict[str, list[str]] = {"bn": [], "propagated": [], "synthetic": []}
    for r in relus:
        m = mom.get(r.inputs[0])
        if m is None:
            fallback = fallback or synthetic_scales(model, graph, norm, percentile, seed, warn=False).lam
            lam[r.name] = fallback[r.name]
            kinds["synthetic"].append(r.name)
            continue
        kinds["bn" if r.inputs[0] in stats else "propagated"].append(r.name)
        layer = _mixture_quantile(m, q, r.max_value)
        if norm == "channel":
            lv = np.maximum(m.mean + _z(q) * np.sqrt(m.var), 0.0)
            if r.max_value is not None:
                lv = np.minimum(lv, r.max_value)
            lv[lv <= 0] = layer if layer > 0 else 1.0
        else:
            lv = np.array([layer if layer > 0 else 1.0])
        lam[r.name] = lv.astype(np.float64)
    msg = _warning(kinds, norm, 100 * q)
    log.warning(msg)
    return Calibration(lam=lam, input_absmax=1.0, method=f"bn-stats:{norm}:{100 * q:g}", warnings=[msg])


def _names(names: list[str], most: int = 4) -> str:
    shown = ", ".join(f"'{n}'" for n in names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def _warning(kinds: dict[str, list[str]], norm: str, pct: float) -> str:
    parts = []
    if kinds["bn"]:
        parts.append(f"{len(kinds['bn'])} layer(s) from the BatchNorm statistics before them ({_names(kinds['bn'])})")
    if kinds["propagated"]:
        parts.append(f"{len(kinds['propagated'])} from statistics propagated through the layers before them "
                     f"({_names(kinds['propagated'])})")
    if kinds["synthetic"]:
        parts.append(f"{len(kinds['synthetic'])} that no statistic reaches from synthetic inputs "
                     f"({_names(kinds['synthetic'])})")
    return ("no calibration data: thresholds are the " + f"{pct:g}th percentile of Normal "
            "activations modelled on BatchNorm statistics (" + "; ".join(parts) + f"); {EXPECTED_GAP}; "
            "inputs assumed within [-1, 1]; pass --calib FILE.npz with a few hundred training "
            "samples for calibrated thresholds")


def data_free_scales(model: onnx.ModelProto, graph: Graph, norm: str = "percentile",
                     percentile: float | None = None, seed: int = 0, progress: bool = False) -> Calibration:
    """Scales without calibration data: from BatchNorm statistics where the model has them
    (:func:`bn_scales`), else from the activations on synthetic inputs
    (:func:`~.statistics.synthetic_scales`; ``progress``: its bar on stderr). ``percentile``
    None: each source's own default (99.9 for BatchNorm statistics,
    :data:`~.statistics.SYNTHETIC_PERCENTILE` on synthetic inputs, whose tails reach further
    than real data's)."""
    return (bn_scales(model, graph, norm, percentile or 99.9, seed)
            or synthetic_scales(model, graph, norm, percentile or SYNTHETIC_PERCENTILE, seed,
                                progress=progress))
