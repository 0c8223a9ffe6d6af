"""Residual adds need one scale on all their inputs: give every input of an add that is not
the sole output of a weighted node an identity affine node, which quantization then turns
into the integer multiplier that aligns it."""

from __future__ import annotations

import numpy as np

from ..ir import AddNode, AffineNode, Graph, Node, WeightedNode


def align_add_inputs(graph: Graph) -> Graph:
    """Give every input of an add that is not the sole output of a weighted node an identity
    affine node, so that all inputs of the add can be put on one scale."""
    nodes: list[Node] = []
    g = graph.copy()
    for n in g.nodes:
        if isinstance(n, AddNode):
            new_inputs = []
            for k, src in enumerate(n.inputs):
                producer = g[src]
                if isinstance(producer, WeightedNode) and len(g.consumers(src)) == 1:
                    new_inputs.append(src)
                    continue
                c = producer.shape[0]
                ident = AffineNode(name=f"{n.name}.align{k}", inputs=[src], shape=producer.shape,
                                   weight=np.ones(c, np.float32), bias=np.zeros(c, np.float32))
                nodes.append(ident)
                new_inputs.append(ident.name)
            n.inputs = new_inputs
        nodes.append(n)
    return graph.replace_nodes(nodes)
