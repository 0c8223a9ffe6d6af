"""Primitive conversion: an ANN graph plus activation scales becomes an integer SNN graph.

Every ReLU becomes a non-leaky IF layer whose spike count over T steps stands for the
activation: a count c of a layer with scale ``lam`` means ``lam * c / T``. The conversion is
the ordered list of passes :data:`CONVERSION_PASSES` (one module each in this folder);
:class:`ConversionOptions` are the choices it takes (docs/semantics.md).
"""

from __future__ import annotations

from typing import Callable

from ..calibrate.statistics import Calibration
from ..errors import ModelError, UsageError
from ..ir import Graph, MaxPool2dNode
from .align_adds import align_add_inputs
from ..ir.options import V_INIT_MODES, ConversionOptions
from .quantize import assign_scales
from .relu_to_if import relu_to_if

__all__ = ["CONVERSION_PASSES", "ConversionOptions", "V_INIT_MODES", "convert"]


def convert(ann: Graph, calib: Calibration, opts: ConversionOptions) -> Graph:
    """The integer SNN graph for an ANN graph and its activation scales: the passes of
    :data:`CONVERSION_PASSES`, in order."""
    opts.check()
    if ann.is_spiking:
        raise ModelError("the graph is already converted")
    pools = [n.name for n in ann.nodes if isinstance(n, MaxPool2dNode)]
    if opts.spikes == "signed" and pools:
        raise UsageError(f"max pool '{pools[0]}' cannot read signed spikes: a spike-count maximum is "
                         "defined only for counts that never fall",
                         "use --spikes binary, or --maxpool avg, or average pooling (or a stride-2 "
                         "convolution) in the model")
    g = ann
    for _name, step in CONVERSION_PASSES:
        g = step(g, calib, opts)
    g.timesteps = opts.timesteps
    g.conversion = opts
    g.validate()
    return g


def _align_adds(graph: Graph, calib: Calibration, opts: ConversionOptions) -> Graph:
    return align_add_inputs(graph)


# The conversion, in order: (name, pass). Each pass takes the graph, the calibration and the
# options and returns a new graph.
CONVERSION_PASSES: tuple[tuple[str, Callable[[Graph, Calibration, ConversionOptions], Graph]], ...] = (
    ("align_adds", _align_adds),
    ("relu_to_if", relu_to_if),
    ("quantize", assign_scales),
)
