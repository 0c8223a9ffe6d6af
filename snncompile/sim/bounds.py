"""Bounds of the integers a converted graph computes, and the float types that hold them.

The simulator computes on integers held in float tensors: exact in float32 while every
partial sum stays below 2^24, in float64 below 2^53. These bounds, propagated through the
graph from the input's levels, the weights and the window, choose the type per node and
show where a membrane cannot saturate.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import torch

from ..errors import ModelError
from ..ir import AffineNode, AvgPool2dNode, AddNode, Graph, IFNode, InputNode, MaxPool2dNode, WeightedNode


EXACT_F32 = 2 ** 24


EXACT_F64 = 2 ** 53


def value_bounds(graph: Graph, timesteps: int, only: Collection[str] | None = None) -> dict[str, float]:
    """An upper bound of |value| of every node's per-step integer output (``only``: of
    these nodes, whose inputs are among them or IF nodes, and of the IF nodes)."""
    return _bounds(graph, timesteps, per_step=True, only=only)


def window_bounds(graph: Graph, timesteps: int, only: Collection[str] | None = None) -> dict[str, float]:
    """An upper bound of the sum over the window of |value| of every node's output
    (``only``: as for :func:`value_bounds`)."""
    return _bounds(graph, timesteps, per_step=False, only=only)


def _bounds(graph: Graph, timesteps: int, per_step: bool,
            only: Collection[str] | None = None) -> dict[str, float]:
    """Bounds propagated through the graph: of one step's value (``per_step``: the once
    input and a first-step bias bring T times their value at t = 0), or of the sum over the
    window (T steps of at most one spike; every input and bias adds up to T times its value).
    An IF node's bound holds whatever its inputs, so ``only`` can leave out what feeds one."""
    T = timesteps
    b: dict[str, float] = {}
    for n in graph.nodes:
        if only is not None and n.name not in only and not isinstance(n, (InputNode, IFNode, MaxPool2dNode)):
            continue
        if isinstance(n, InputNode):
            qmax = 2 ** (n.bits - 1) - 1
            b[n.name] = float(qmax * (T if n.mode == "once" or not per_step else 1))
        elif isinstance(n, (IFNode, MaxPool2dNode)):
            b[n.name] = 1.0 if per_step else float(T)
        elif isinstance(n, WeightedNode):
            w = np.abs(n.weight_int).astype(np.float64)
            row = w.max(initial=0) if isinstance(n, AffineNode) else w.reshape(w.shape[0], -1).sum(axis=1).max(initial=0)
            bias = float(np.abs(n.bias_int).max(initial=0)) if n.bias_int is not None else 0.0
            if n.bias_mode == "first_step" or not per_step:
                bias *= T
            b[n.name] = float(row) * b[n.inputs[0]] + bias
        elif isinstance(n, AvgPool2dNode):
            b[n.name] = b[n.inputs[0]] * n.kernel[0] * n.kernel[1]
        elif isinstance(n, AddNode):
            b[n.name] = sum(b[i] for i in n.inputs)
        else:
            b[n.name] = max(b[i] for i in n.inputs)
    return b


def exact_dtypes(bounds: dict[str, float]) -> dict[str, torch.dtype]:
    """Per node of ``bounds`` (:func:`value_bounds`), the float type that holds its per-step
    values and partial sums exactly: float32 below 2^24, else float64. Values that can
    reach 2^53 are refused (a :class:`ModelError`)."""
    worst = max(bounds.values())
    if worst >= EXACT_F64:
        raise ModelError(f"integer values can reach {worst:.3g}, beyond exact arithmetic (2^53)",
                         "use fewer weight bits or a smaller --timesteps")
    return {k: (torch.float32 if v < EXACT_F32 else torch.float64) for k, v in bounds.items()}
