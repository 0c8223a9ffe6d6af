"""The registry of op converters: ONNX op type -> function(ctx, node).

A converter reads its inputs through the :class:`~.context.ImportContext`, appends IR nodes
(or aliases its output), and raises :class:`~snncompile.errors.ModelError` (built with
:func:`~.context.node_error`) when the node's attributes have no spiking equivalent.
Nodes whose inputs are all constants never reach a converter: they are constant-folded.
"""

from __future__ import annotations

from typing import Callable

import onnx

from .context import ImportContext

Converter = Callable[[ImportContext, onnx.NodeProto], None]

# The one piece of module-level mutable state: filled by @register at import time.
CONVERTERS: dict[str, Converter] = {}

# Why common unsupported ops cannot be converted, shown next to the node that uses them.
UNSUPPORTED_NOTES: dict[str, str] = {
    **{op: "only ReLU-type activations map onto integrate-and-fire neurons; use ReLU in hidden layers"
       for op in ("Sigmoid", "Tanh", "LeakyRelu", "PRelu", "Elu", "Selu", "Gelu", "HardSigmoid",
                  "HardSwish", "Softplus", "Softsign", "Mish", "Celu", "ThresholdedRelu")},
    **{op: "recurrent layers have no conversion to this spiking model"
       for op in ("LSTM", "GRU", "RNN")},
    "Softmax": "only a Softmax at the very end of the network is removed",
    "LogSoftmax": "only a LogSoftmax at the very end of the network is removed",
    "LRN": "local response normalization has no spiking equivalent; use BatchNormalization",
    "Transpose": "moving data between axes has no layer in the IR; keep the (N, C, H, W) layout",
}


def register(*op_types: str) -> Callable[[Converter], Converter]:
    """Decorator: make ``fn`` the converter of each ONNX op type in ``op_types``."""
    def wrap(fn: Converter) -> Converter:
        for op in op_types:
            if op in CONVERTERS:
                raise RuntimeError(f"two converters registered for ONNX op '{op}'")
            CONVERTERS[op] = fn
        return fn
    return wrap


def supported_ops() -> list[str]:
    """ONNX op types that may act on activations (constant subgraphs may use any op)."""
    return sorted(CONVERTERS)
