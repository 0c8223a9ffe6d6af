"""The write-back pass: float parameters of a converted graph -> a new integer IR.

The IR stays the one source of truth. Training changes only *float* values (the ANN weights
and biases every weighted node keeps beside its integers, and the IF scales ``lam``); the
integers are then derived from them by exactly the quantization primitive conversion uses
(:func:`snncompile.passes.quantize.assign_scales`): per-layer symmetric ``weight_bits`` weights,
``bias_int = round(b / s)``, ``threshold = round(lam / s_in)``. The input scale is kept.
The tandem forward runs on a graph produced by this pass, so what was trained is what is
written.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..calibrate.statistics import Calibration
from ..ir.options import ConversionOptions
from .quantize import assign_scales
from ..errors import ModelError
from ..ir import Graph, IFNode, WeightedNode


def conversion_options(graph: Graph, weight_bits: int | None = None) -> ConversionOptions:
    """The options a converted graph was made with, optionally with another weight width."""
    if graph.conversion is None:
        raise ModelError("the graph carries no conversion options: it was not made by convert()")
    opts = graph.conversion
    if weight_bits is not None:
        opts = dataclasses.replace(opts, weight_bits=int(weight_bits))
    return opts


def requantize(graph: Graph, weight_bits: int | None = None, reuse: frozenset[str] = frozenset()) -> Graph:
    """Re-derive every integer (weights, biases, thresholds, v_init, scales) of a converted
    graph from its float weights and IF scales; the input scale stays as it is. Nodes in
    ``reuse`` keep theirs (see :func:`snncompile.passes.quantize.assign_scales`)."""
    if not graph.is_spiking or graph.input.out_scale is None:
        raise ModelError("requantize needs a converted graph")
    opts = conversion_options(graph, weight_bits)
    opts.check()
    lam = {n.name: np.asarray(n.lam, np.float64) for n in graph.nodes if isinstance(n, IFNode)}
    calib = Calibration(lam=lam, input_absmax=0.0, method="")
    g = assign_scales(graph, calib, opts, input_scale=graph.input.out_scale, reuse=reuse)
    g.timesteps = graph.timesteps
    g.conversion = opts
    return g


def with_params(graph: Graph, weights: dict[str, np.ndarray], biases: dict[str, np.ndarray],
                lam: dict[str, np.ndarray] | None = None, weight_bits: int | None = None,
                reuse: frozenset[str] = frozenset()) -> Graph:
    """A new, validated integer graph whose float weights/biases (by node name) and IF
    scales are replaced, with all integers re-derived by :func:`requantize` (but those of
    ``reuse``, nodes whose values and inputs are as ``graph`` holds them already)."""
    g = graph.copy()
    for n in g.nodes:
        if isinstance(n, WeightedNode):
            if n.name in weights:
                w = np.asarray(weights[n.name], np.float32)
                if w.shape != n.weight.shape:
                    raise ModelError(f"node '{n.name}': new weight shape {w.shape} != {n.weight.shape}")
                n.weight = w
            if n.name in biases and n.bias is not None:
                n.bias = np.asarray(biases[n.name], np.float32).reshape(n.bias.shape)
        elif isinstance(n, IFNode) and lam and n.name in lam:
            n.lam = np.asarray(lam[n.name], np.float64).reshape(n.lam.shape)
    return requantize(g, weight_bits, reuse)
