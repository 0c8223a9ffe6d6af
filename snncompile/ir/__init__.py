"""The intermediate representation: typed nodes, the graph, and its file format.

Every stage of the compiler reads and writes this graph; ``snncompile.ir`` re-exports the
node types and :class:`Graph`, which plugins may import (docs/plugins.md).
"""

from .graph import Graph
from .options import V_INIT_MODES, ConversionOptions
from .nodes import (BIAS_MODES, INPUT_MODES, NODE_TYPES, RESET_MODES, SPIKE_MODES, AddNode,
                    AffineNode, AvgPool2dNode, ConcatNode, Conv2dNode, DenseNode, FlattenNode,
                    IFNode, InputNode, MaxPool2dNode, Node, PadNode, ReluNode, ReshapeNode,
                    WeightedNode, array_field, membrane_overflows, mode_errors)

__all__ = ["ConversionOptions", "V_INIT_MODES", "BIAS_MODES", "INPUT_MODES", "NODE_TYPES", "RESET_MODES", "SPIKE_MODES", "AddNode",
           "AffineNode", "AvgPool2dNode", "ConcatNode", "Conv2dNode", "DenseNode", "FlattenNode",
           "Graph", "IFNode", "InputNode", "MaxPool2dNode", "Node", "PadNode", "ReluNode",
           "ReshapeNode", "WeightedNode", "array_field", "membrane_overflows", "mode_errors"]
