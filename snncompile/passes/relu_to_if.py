"""Primitive conversion's neuron swap: every ReLU becomes a non-leaky integrate-and-fire
layer carrying its activation scale ``lam`` (its threshold follows in quantization)."""

from __future__ import annotations

import numpy as np

from ..calibrate.statistics import Calibration
from ..errors import ModelError
from ..ir import Graph, IFNode, Node, ReluNode
from ..ir.options import ConversionOptions


def relu_to_if(graph: Graph, calib: Calibration, opts: ConversionOptions) -> Graph:
    """Replace every ReLU by an IF layer carrying its activation scale ``lam``."""
    nodes: list[Node] = []
    for n in graph.copy().nodes:
        if isinstance(n, ReluNode):
            if n.name not in calib.lam:
                raise ModelError(f"no activation scale for layer '{n.name}'")
            nodes.append(IFNode(name=n.name, inputs=n.inputs, shape=n.shape,
                                threshold=np.ones(1, np.int64), lam=np.asarray(calib.lam[n.name], np.float64),
                                reset=opts.reset, membrane_bits=opts.membrane_bits,
                                calib_tensor=n.calib_tensor, spikes=opts.spikes))
        else:
            nodes.append(n)
    return graph.replace_nodes(nodes)
