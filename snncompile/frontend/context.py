"""The state of one import: which ONNX tensors are constants, which are activations.

Op converters (:mod:`snncompile.frontend.ops`) read their inputs and write IR nodes only
through an :class:`ImportContext`, so each converter stays a short function of one node.

Naming rule: an IR node is named after the ONNX tensor it computes, so calibration can read
the same tensor from onnxruntime. Ops that change nothing (Identity, Dropout, ...) *alias*
their output tensor to the IR node of their input instead of adding a node.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper

from .. import ir
from ..errors import ModelError


_NONFINITE_HINT = ("the model's weights are broken (a diverged training run or a faulty export): "
                   "retrain or repair them (e.g. torch.nan_to_num on the state dict) and re-export")


def describe(node: onnx.NodeProto) -> str:
    """``node 'name' (Op)``; unnamed nodes are named by their first output tensor."""
    return f"node '{node.name or (node.output[0] if node.output else '?')}' ({node.op_type})"


def node_error(node: onnx.NodeProto, what: str, hint: str | None = None) -> ModelError:
    """A ModelError whose message starts with the node it is about."""
    return ModelError(f"{describe(node)}: {what}", hint)


def attributes(node: onnx.NodeProto) -> dict[str, Any]:
    """The node's attributes as Python values (strings decoded, lists as lists)."""
    out: dict[str, Any] = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        out[a.name] = v
    return out


class ImportContext:
    """Constants, activations and IR nodes built so far while walking one ONNX graph.

    ``batch`` is the batch size the constant folder sees for activations: the model's fixed
    batch size, or a sentinel when the batch dimension is dynamic. The sentinel is a prime no
    layer size is likely to equal (3 would be mistaken for the RGB channels of
    ``x.reshape(x.shape[1], -1)``) and small enough that folding e.g. ConstantOfShape(Shape(x))
    stays cheap. ``used`` holds every tensor some converted node (or the chosen output) reads,
    ``readers`` how many times each is read.
    """

    SENTINEL_BATCH = 97

    def __init__(self, batch: int, opset: int, used: set[str], readers: dict[str, int] | None = None):
        self.batch = batch
        self.opset = opset
        self.used = used
        self.readers = readers or {}
        self.consts: dict[str, np.ndarray] = {}
        self.tensors: dict[str, str] = {}  # ONNX activation tensor -> IR node name
        self.nodes: list[ir.Node] = []
        self.shapes: dict[str, tuple[int, ...]] = {}  # IR node name -> per-sample shape
        self.warnings: list[str] = []

    # -- reading inputs -------------------------------------------------------------------
    def is_const(self, tensor: str) -> bool:
        return tensor in self.consts

    def is_act(self, tensor: str) -> bool:
        return tensor in self.tensors

    def has_input(self, node: onnx.NodeProto, i: int) -> bool:
        return len(node.input) > i and node.input[i] != ""

    def const(self, node: onnx.NodeProto, i: int, default: Any = None) -> Any:
        """The constant value of input ``i`` (``default`` when the optional input is absent)."""
        if not self.has_input(node, i):
            if default is None:
                raise node_error(node, f"input {i} is missing")
            return default
        name = node.input[i]
        if name not in self.consts:
            raise node_error(node, f"input {i} ('{name}') must be a constant (a weight or a fixed "
                                   "parameter), but it is computed from the network input",
                             "only the first input of this op may depend on the network input")
        return self.consts[name]

    def weight(self, node: onnx.NodeProto, i: int, what: str, dtype: type = np.float32) -> np.ndarray:
        """Input ``i`` as a float array of learned values (a weight, bias, scale): constant and
        finite, else a ModelError naming the tensor, because NaN or infinity would turn into
        nonsense integers (or a crash) far from where they came in."""
        v = np.array(self.const(node, i), dtype=dtype)
        if not np.all(np.isfinite(v)):
            nan, inf = int(np.isnan(v).sum()), int(np.isinf(v).sum())
            found = " and ".join(f for f in (f"{nan} NaN" if nan else "",
                                             f"{inf} infinite" if inf else "") if f)
            raise node_error(node, f"{what} '{node.input[i]}' holds {found} value(s) (of {v.size})",
                             _NONFINITE_HINT)
        return v

    def act(self, node: onnx.NodeProto, i: int = 0) -> str:
        """The IR node computing activation input ``i``."""
        if not self.has_input(node, i):
            raise node_error(node, f"input {i} is missing")
        name = node.input[i]
        if name not in self.tensors:
            raise node_error(node, f"input {i} ('{name}') must depend on the network input, but it "
                                   "is a constant")
        return self.tensors[name]

    def node(self, ir_name: str) -> ir.Node:
        """The IR node built so far under ``ir_name``."""
        return next(n for n in reversed(self.nodes) if n.name == ir_name)

    def drop_unread(self, ir_name: str) -> None:
        """Remove node ``ir_name`` when no IR node reads it (its one reader replaced it)."""
        if not any(ir_name in n.inputs for n in self.nodes):
            self.nodes = [n for n in self.nodes if n.name != ir_name]

    def shape(self, ir_name: str) -> tuple[int, ...]:
        return self.shapes[ir_name]

    def full_shape(self, ir_name: str) -> tuple[int, ...]:
        """Shape with the (sentinel or fixed) batch dimension in front."""
        return (self.batch, *self.shapes[ir_name])

    # -- writing results ------------------------------------------------------------------
    def add(self, node: ir.Node, tensor: str | None = None) -> str:
        """Append an IR node, infer its shape, and map ``tensor`` (default: its name) to it."""
        for field in ("weight", "bias"):
            v = getattr(node, field, None)
            if v is not None and not np.all(np.isfinite(v)):
                raise ModelError(f"{node.op} '{node.name}': its {field} is not finite after folding "
                                 "the model's constants (NaN or infinity, e.g. from a BatchNorm "
                                 "variance below zero or a division by a tiny constant)",
                                 _NONFINITE_HINT)
        shape = tuple(int(d) for d in node.infer_shape([self.shapes[i] for i in node.inputs]))
        node.shape = shape
        self.nodes.append(node)
        self.shapes[node.name] = shape
        self.tensors[tensor or node.name] = node.name
        return node.name

    def alias(self, tensor: str, ir_name: str) -> None:
        """Let ONNX tensor ``tensor`` stand for the existing IR node ``ir_name``."""
        self.tensors[tensor] = ir_name

    def unique_name(self, base: str) -> str:
        """A node name not used yet (for nodes that have no ONNX tensor of their own)."""
        name, k = base, 1
        taken = set(self.shapes) | set(self.tensors)
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        return name

    def warn(self, message: str) -> None:
        self.warnings.append(message)
