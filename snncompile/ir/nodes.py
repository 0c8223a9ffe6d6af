"""The node types of the intermediate representation (the graph is in :mod:`.graph`).

One graph type serves both stages of compilation:

* the **ANN graph** the frontend produces: float weights, ``relu`` nodes;
* the **SNN graph** conversion produces: ``relu`` replaced by ``if`` (integrate-and-fire)
  nodes, every weighted node also holding integer weights and biases, and every tensor a
  scale ``out_scale`` that says what real value one unit of it stands for.

Shapes are per sample (no batch axis): ``(C, H, W)`` for images, ``(F,)`` for vectors.
Nodes are kept in topological order. The spiking semantics (what the integers mean, step by
step) are defined by :mod:`snncompile.sim.simulator`; ``docs/semantics.md`` states them in prose.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..errors import ModelError

INPUT_MODES = ("once", "every_step")
RESET_MODES = ("subtract", "zero")
# binary: a spike is +1; signed: a neuron that has fired can also emit -1 (take a spike back)
SPIKE_MODES = ("binary", "signed")
BIAS_MODES = ("every_step", "first_step")


def mode_errors(input_mode: str | None = None, reset: str | None = None, spikes: str | None = None,
                bias_mode: str | None = None) -> list[tuple[str, str | None]]:
    """What is wrong with these input and neuron modes (None: not given), as (message, fix)
    pairs; empty when the semantics defines them. Conversion options and graph checks both
    ask this one definition."""
    out: list[tuple[str, str | None]] = []
    for what, value, allowed in (("input mode", input_mode, INPUT_MODES), ("reset", reset, RESET_MODES),
                                 ("spikes", spikes, SPIKE_MODES), ("bias_mode", bias_mode, BIAS_MODES)):
        if value is not None and value not in allowed:
            out.append((f"{what} '{value}' not in {allowed}", None))
    if spikes == "signed" and reset is not None and reset != "subtract":
        out.append(("signed spikes need reset by subtraction (a negative spike gives back the threshold "
                    "a spike took)", "drop --reset zero, or use --spikes binary"))
    return out


def array_field(optional: bool = True) -> Any:
    """A dataclass field holding a numpy array (stored in the .npz beside the manifest)."""
    return field(default=None, metadata={"array": True}) if optional else field(metadata={"array": True})


@dataclass(kw_only=True)
class Node:
    """A node of the graph: a named operation on the outputs of other nodes."""

    op: ClassVar[str] = ""
    name: str
    inputs: list[str] = field(default_factory=list)
    shape: tuple[int, ...] = ()
    # Real value of one unit of this node's integer output (SNN graphs only), broadcastable
    # to ``shape``: a spike of an IF layer with threshold scale lam stands for lam / T.
    out_scale: np.ndarray | None = array_field()

    def array_names(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if f.metadata.get("array")]

    def param_names(self) -> list[str]:
        base = {"name", "inputs", "shape"}
        return [f.name for f in dataclasses.fields(self)
                if not f.metadata.get("array") and f.name not in base]

    def infer_shape(self, in_shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
        """The output shape given the input shapes; raises ModelError when they do not fit."""
        raise TypeError(f"{type(self).__name__} defines no shape rule")

    @property
    def is_weighted(self) -> bool:
        return False


@dataclass(kw_only=True)
class InputNode(Node):
    """The analog input. In an SNN it is quantized to ``bits``-bit integers with ``out_scale``
    and injected as charge.

    Per step t: ``once``: ``T * x_int`` at t = 0, then 0; ``every_step``: ``x_int``."""

    op: ClassVar[str] = "input"
    mode: str = "once"
    bits: int = 8
    source: str = ""  # name of the ONNX graph input

    def infer_shape(self, in_shapes):
        return self.shape


@dataclass(kw_only=True)
class WeightedNode(Node):
    """Shared fields of nodes with weights: float values and, after conversion, integers."""

    weight: np.ndarray = array_field(optional=False)
    bias: np.ndarray | None = array_field()
    weight_int: np.ndarray | None = array_field()
    bias_int: np.ndarray | None = array_field()
    # every_step: bias_int added each step; first_step: T * bias_int added at t = 0 only
    # (used where the analog input arrives once, so charge and bias arrive together).
    bias_mode: str = "every_step"
    # weight_int is a mantissa times 2^weight_exp (Loihi's shared per-layer weight exponent);
    # the weight width counts the mantissa. 0: plain integers.
    weight_exp: int = 0

    @property
    def is_weighted(self) -> bool:
        return True


@dataclass(kw_only=True)
class Conv2dNode(WeightedNode):
    """2-D convolution, weight (Cout, Cin/groups, kH, kW); padding (top, left, bottom, right).

    Per step t: ``y[t] = conv(weight_int, x[t]) + b(t)``, zero padding; ``b(t)`` is
    ``bias_int`` every step (``every_step``) or ``T * bias_int`` at t = 0 only (``first_step``)."""

    op: ClassVar[str] = "conv2d"
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    def infer_shape(self, in_shapes):
        (s,) = in_shapes
        if len(s) != 3:
            raise ModelError(f"conv2d '{self.name}' needs a (C, H, W) input, got {s}")
        cout, cin_g, kh, kw = self.weight.shape
        if s[0] != cin_g * self.groups:
            raise ModelError(f"conv2d '{self.name}': input has {s[0]} channels, weight expects "
                             f"{cin_g * self.groups}")
        h = _conv_len(s[1], kh, self.stride[0], self.padding[0] + self.padding[2], self.dilation[0])
        w = _conv_len(s[2], kw, self.stride[1], self.padding[1] + self.padding[3], self.dilation[1])
        if h <= 0 or w <= 0:
            raise ModelError(f"conv2d '{self.name}': output would be empty for input {s}",
                             _EMPTY_OUTPUT_HINT)
        return (cout, h, w)


@dataclass(kw_only=True)
class DenseNode(WeightedNode):
    """Fully connected layer, weight (out, in): y = W x + b.

    Per step t: ``y[t] = weight_int @ x[t] + b(t)``, with ``b(t)`` as for :class:`Conv2dNode`."""

    op: ClassVar[str] = "dense"

    def infer_shape(self, in_shapes):
        (s,) = in_shapes
        if len(s) != 1 or s[0] != self.weight.shape[1]:
            raise ModelError(f"dense '{self.name}' expects ({self.weight.shape[1]},) input, got {s}")
        return (self.weight.shape[0],)


@dataclass(kw_only=True)
class AffineNode(WeightedNode):
    """Per-channel y = a * x + b (a BatchNorm that could not be folded, or a rescaling).

    Per step t: ``y[t] = weight_int[c] * x[t] + b(t)`` per channel c, ``b(t)`` as for
    :class:`Conv2dNode`."""

    op: ClassVar[str] = "affine"

    def infer_shape(self, in_shapes):
        (s,) = in_shapes
        if not s or s[0] != self.weight.shape[0]:
            raise ModelError(f"affine '{self.name}' has {self.weight.shape[0]} channels, input {s}")
        return s


@dataclass(kw_only=True)
class ReluNode(Node):
    """ReLU, optionally clipped at ``max_value`` (ReLU6, Clip(0, m)). ANN graphs only.

    ``calib_tensor`` names the ONNX tensor whose (clipped) ReLU equals this node's output:
    calibration reads its statistics there. Conversion replaces it by an :class:`IFNode`."""

    op: ClassVar[str] = "relu"
    max_value: float | None = None
    calib_tensor: str = ""

    def infer_shape(self, in_shapes):
        return in_shapes[0]


@dataclass(kw_only=True)
class IFNode(Node):
    """Non-leaky integrate-and-fire neurons, one per element of ``shape``.

    ``threshold`` is an integer per channel (shape (C,) or (1,)); ``v_init`` the membrane at
    t = 0 in the same units; ``lam`` the real activation a count of T spikes stands for.
    ``spikes`` "signed" adds negative spikes with memory: where the membrane falls below 0
    after the reset and the neuron's net count is above 0, it emits -1 and gains a threshold
    back, so charge that arrives late can undo a spike fired too early (see
    docs/semantics.md).

    Per step t: ``v += I[t]`` (saturating at +-(2^(membrane_bits-1) - 1)); ``s[t] = 1`` where
    ``v >= threshold``, then ``v -= threshold`` (``subtract``) or ``v = 0`` (``zero``); signed:
    ``s[t] = -1`` where ``v < 0`` and the net count is above 0, then ``v += threshold``. The
    output is ``s[t]``; ``v`` starts at ``v_init``."""

    op: ClassVar[str] = "if"
    threshold: np.ndarray = array_field(optional=False)
    v_init: np.ndarray | None = array_field()
    lam: np.ndarray | None = array_field()
    reset: str = "subtract"
    membrane_bits: int = 32
    calib_tensor: str = ""
    spikes: str = "binary"

    def infer_shape(self, in_shapes):
        return in_shapes[0]


def membrane_overflows(n: IFNode) -> list[tuple[str, int, int]]:
    """Each of IF layer ``n``'s threshold and initial membrane that its membrane cannot hold,
    as (field, largest magnitude, the membrane's maximum); empty when both fit. A neuron whose
    threshold is past its saturating membrane can never fire, so no graph may carry one:
    conversion refuses to write it (targets.rules, rule ``membrane_range``) and loading an
    artifact refuses to read it (ir.serialize), by this one definition."""
    top = 2 ** (int(n.membrane_bits) - 1) - 1
    out = []
    for a in ("threshold", "v_init"):
        v = getattr(n, a)
        if v is not None and v.size and (reach := int(np.abs(v).max())) > top:
            out.append((a, reach, top))
    return out


@dataclass(kw_only=True)
class _Pool2dNode(Node):
    """Shared fields of the 2-D pools; padding is (top, left, bottom, right)."""

    kernel: tuple[int, int] = (2, 2)
    stride: tuple[int, int] = (2, 2)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)

    def infer_shape(self, in_shapes):
        (s,) = in_shapes
        return _pool_shape(self, s)


@dataclass(kw_only=True)
class AvgPool2dNode(_Pool2dNode):
    """Average pooling. In an SNN it is an integer sum pool; the 1/k^2 lives in the scale.

    Per step t: ``y[t]`` = the sum of ``x[t]`` over each window (zero padding)."""

    op: ClassVar[str] = "avgpool2d"


@dataclass(kw_only=True)
class MaxPool2dNode(_Pool2dNode):
    """Max pooling. On spikes: the output's running spike count is the maximum of the inputs'
    running counts (exact on counts; see docs/semantics.md).

    Per step t: ``y[t] = 1`` where the window's maximum running count (sum of ``x[0..t]``)
    grows at t, else 0."""

    op: ClassVar[str] = "maxpool2d"


@dataclass(kw_only=True)
class FlattenNode(Node):
    """(C, H, W) -> (C*H*W,) in row-major order; per step t, ``y[t]`` is ``x[t]`` flattened."""

    op: ClassVar[str] = "flatten"

    def infer_shape(self, in_shapes):
        return (int(np.prod(in_shapes[0])),)


@dataclass(kw_only=True)
class ReshapeNode(Node):
    """Row-major reshape of each sample to ``target`` (same number of elements), per step."""

    op: ClassVar[str] = "reshape"
    target: tuple[int, ...] = ()

    def infer_shape(self, in_shapes):
        if int(np.prod(in_shapes[0])) != int(np.prod(self.target)):
            raise ModelError(f"reshape '{self.name}': cannot reshape {in_shapes[0]} to {self.target}")
        return tuple(self.target)


@dataclass(kw_only=True)
class AddNode(Node):
    """Elementwise sum of two or more tensors of the same shape (residual connections):
    per step t, ``y[t] = sum_i x_i[t]`` (conversion gives all inputs one scale)."""

    op: ClassVar[str] = "add"

    def infer_shape(self, in_shapes):
        if len(in_shapes) < 2 or any(s != in_shapes[0] for s in in_shapes):
            raise ModelError(f"add '{self.name}' needs inputs of equal shape, got {in_shapes}")
        return in_shapes[0]


@dataclass(kw_only=True)
class ConcatNode(Node):
    """Concatenation along a per-sample axis (0 is channels), per step."""

    op: ClassVar[str] = "concat"
    axis: int = 0

    def infer_shape(self, in_shapes):
        ref = list(in_shapes[0])
        for s in in_shapes[1:]:
            if len(s) != len(ref) or any(a != b for i, (a, b) in enumerate(zip(s, ref)) if i != self.axis):
                raise ModelError(f"concat '{self.name}': shapes {in_shapes} differ off axis {self.axis}")
        ref[self.axis] = sum(s[self.axis] for s in in_shapes)
        return tuple(ref)


@dataclass(kw_only=True)
class PadNode(Node):
    """Zero padding; ``pads`` = (begin_0, ..., begin_k, end_0, ..., end_k) per sample axis;
    per step t, ``y[t]`` is ``x[t]`` with zeros around it."""

    op: ClassVar[str] = "pad"
    pads: tuple[int, ...] = ()

    def infer_shape(self, in_shapes):
        (s,) = in_shapes
        k = len(s)
        if len(self.pads) != 2 * k or min(self.pads) < 0:
            raise ModelError(f"pad '{self.name}': pads {self.pads} do not fit shape {s}")
        return tuple(d + self.pads[i] + self.pads[i + k] for i, d in enumerate(s))


NODE_TYPES: dict[str, type[Node]] = {
    cls.op: cls for cls in (InputNode, Conv2dNode, DenseNode, AffineNode, ReluNode, IFNode,
                            AvgPool2dNode, MaxPool2dNode, FlattenNode, ReshapeNode, AddNode,
                            ConcatNode, PadNode)
}


_EMPTY_OUTPUT_HINT = ("the window (kernel x dilation) is larger than the padded input: check the "
                      "layer's kernel, stride and padding, and the model's input size")


def _conv_len(n: int, k: int, stride: int, pad_total: int, dilation: int = 1) -> int:
    return (n + pad_total - dilation * (k - 1) - 1) // stride + 1


def _pool_shape(node, s: tuple[int, ...]) -> tuple[int, ...]:
    if len(s) != 3:
        raise ModelError(f"{node.op} '{node.name}' needs a (C, H, W) input, got {s}")
    h = _conv_len(s[1], node.kernel[0], node.stride[0], node.padding[0] + node.padding[2])
    w = _conv_len(s[2], node.kernel[1], node.stride[1], node.padding[1] + node.padding[3])
    if h <= 0 or w <= 0:
        raise ModelError(f"{node.op} '{node.name}': output would be empty for input {s}",
                         _EMPTY_OUTPUT_HINT)
    return (s[0], h, w)
