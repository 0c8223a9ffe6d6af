"""Give every linear value of an ONNX model a spiking carrier (MobileNetV2's linear
bottleneck), applied automatically before import where a model needs it.

A *linear value* is the output of a weighted op (Conv, Gemm, MatMul), or an add, pool or
reshape of such, that reaches another weighted op through no ReLU: MobileNetV2's projection
conv (no activation) feeding the next block's expand conv, and its residual stream
``x + block(x)`` with no ReLU after the add. A spiking network has no neuron between the two
weighted ops, so the compiler would fold them into one matrix whose integer weights are
products of two quantized weights (too wide for any target's synapses, and more fan-in).

The rewrite carries each such value y as two ReLU populations, ``P = relu(y)`` and
``N = relu(-y)``: y = P - N exactly, so the network computes the same function and
calibration (onnxruntime on this model) and the ANN baseline agree with it for free. Each
consumer reads the pair with one weighted op per population:

- a weighted consumer W(y) becomes W(P) + W'(N), W' the same op with negated weights and no
  bias (two convolutions into an add, the form of a projection shortcut); an affine op that
  alone reads W(y) (an unfused BatchNorm, a bias Add after a MatMul) goes onto both terms,
  so that it still folds into a weighted op;
- an add consumer y + z becomes Sum(P, -1 * N, z) (identity skip and a -1 scaled skip);
- ``-y`` for N is built by copying the ops that make y with negated weights (a conv's
  kernel, a BatchNorm's scale and shift, a constant factor) down to the previous carriers or
  ReLUs, which are taken with a factor -1.

A value reaching an add followed by a ReLU (ResNet's conv-BN -> add -> ReLU), or only the
graph output, is already carried by a population and is left alone; a model without linear
values is returned unchanged. It works on the ONNX model, not the IR, for the same reason as
:mod:`.rewrite`: thresholds come from onnxruntime activations of the rewritten network.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .context import attributes

# Ops whose output is an IF population in the IR (a ReLU or a clipped ReLU).
_POPULATION = ("Relu", "Clip")
# Weighted ops: the activation is input 0, the weight input 1 (a constant), bias input 2.
_WEIGHTED = ("Conv", "Gemm", "MatMul")
# Linear ops of one activation (input 0) whose other inputs are shapes or axes: -op(x) = op(-x).
_PASS_THROUGH = ("AveragePool", "GlobalAveragePool", "ReduceMean", "Flatten", "Reshape",
                 "Squeeze", "Unsqueeze", "Identity", "Dropout", "Cast", "Pad")
_MINUS_ONE = "snncompile#minus_one"


class _CannotNegate(Exception):
    """A linear value computed by an op this rewrite cannot negate (e.g. a max pool)."""


def split_linear_values(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of ``model`` in which each linear value read by a weighted op is carried by a
    pair of ReLU populations (see the module docstring), and the names of those values
    (empty when the model has none; then the model is returned unchanged). The copy computes
    the same function as ``model`` up to float rounding."""
    g = model.graph
    consts = _constants(g) | {_MINUS_ONE}
    excluded: set[str] = set()
    while True:
        carried = _linear_values(g, consts, excluded)
        if not carried:
            return model, []
        try:
            nodes = _Emitter(g, consts, carried).run()
        except _CannotNegate as e:
            excluded.add(str(e))
            continue
        break
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    out.graph.initializer.append(numpy_helper.from_array(np.array(-1.0, np.float32), _MINUS_ONE))
    return out, [t for t in _topological(g, carried)]


def split_message(values: list[str]) -> str:
    """The one line that says what :func:`split_linear_values` did (never a silent change)."""
    return (f"{len(values)} linear value(s) feeding a weighted op with no ReLU between "
            f"({', '.join(values)}) each carried by two ReLU populations, relu(y) and relu(-y) "
            "(MobileNetV2's linear bottleneck; the network computes the same function)")


def _constants(g: onnx.GraphProto) -> set[str]:
    """Tensors that do not depend on the network input (the importer folds them)."""
    consts = {i.name for i in g.initializer}
    for n in g.node:
        if all(t in consts for t in n.input if t):
            consts.update(o for o in n.output if o)
    return consts


def _acts(n: onnx.NodeProto, consts: set[str]) -> list[str]:
    return [t for t in n.input if t and t not in consts]


def _is_weighted(n: onnx.NodeProto, consts: set[str]) -> bool:
    return (n.op_type in _WEIGHTED and len(n.input) > 1 and n.input[0] not in consts
            and n.input[1] in consts)


def _is_act_add(n: onnx.NodeProto, consts: set[str]) -> bool:
    """An add of activations only (a residual add), as opposed to an add of a bias."""
    return n.op_type in ("Add", "Sum") and len(_acts(n, consts)) == len([t for t in n.input if t]) >= 2


def _linear_values(g: onnx.GraphProto, consts: set[str], excluded: set[str]) -> set[str]:
    """The tensors to carry: linear values (computed through a weighted op with no population
    after it) that a weighted op reads. An add of activations reads a carried value as its
    pair of populations, so the add is linear only through its other inputs."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for t in _acts(n, consts):
            readers.setdefault(t, []).append(n)
    linear: dict[str, bool] = {}
    carried: set[str] = set()
    for n in g.node:
        ins = _acts(n, consts)
        if not ins:
            continue
        if n.op_type in _POPULATION:
            lin = False
        elif _is_weighted(n, consts):
            lin = True
        elif _is_act_add(n, consts):
            lin = any(linear.get(t, False) and t not in carried for t in ins)
        else:
            lin = any(linear.get(t, False) for t in ins)
        for o in n.output:
            if not o:
                continue
            linear[o] = lin
            if lin and o not in excluded and any(_is_weighted(r, consts) and r.input[0] == o
                                                 for r in readers.get(o, [])):
                carried.add(o)
    return carried


def _topological(g: onnx.GraphProto, names: set[str]) -> list[str]:
    return [o for n in g.node for o in n.output if o in names]


@dataclass
class _Emitter:
    """Builds the rewritten node list in one walk over the original nodes (kept in order)."""

    g: onnx.GraphProto
    consts: set[str]
    carried: set[str]
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    producer: dict[str, onnx.NodeProto] = field(default_factory=dict)
    linear: dict[str, bool] = field(default_factory=dict)
    pair: dict[str, tuple[str, str]] = field(default_factory=dict)  # y -> (P, N)
    negated: dict[str, str] = field(default_factory=dict)           # y -> tensor of -y
    split: dict[str, tuple[str, str]] = field(default_factory=dict)  # W(y) -> (W(P), (-W)(N))
    readers: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for n in self.g.node:
            for t in _acts(n, self.consts):
                self.readers[t] = self.readers.get(t, 0) + 1
        for o in self.g.output:
            self.readers[o.name] = self.readers.get(o.name, 0) + 1

    def run(self) -> list[onnx.NodeProto]:
        for n in self.g.node:
            ins = _acts(n, self.consts)
            if _is_weighted(n, self.consts) and n.input[0] in self.pair:
                self._split_weighted(n)
            elif _is_act_add(n, self.consts) and any(t in self.pair for t in ins):
                self._split_add(n)
            elif len(ins) == 1 and ins[0] in self.split and self._absorb(n, ins[0]):
                pass
            else:
                self._emit(n, self._linear_of(n))
            for o in n.output:
                if o in self.carried:
                    self._carry(o)
        return self.nodes

    def _linear_of(self, n: onnx.NodeProto) -> bool:
        ins = _acts(n, self.consts)
        if not ins or n.op_type in _POPULATION:
            return False
        return _is_weighted(n, self.consts) or any(self.linear.get(t, False) for t in ins)

    def _emit(self, n: onnx.NodeProto, linear: bool) -> None:
        self.nodes.append(n)
        for o in n.output:
            if o:
                self.producer[o] = n
                self.linear[o] = linear

    def _node(self, op: str, inputs: list[str], output: str, linear: bool, **attrs) -> str:
        self._emit(helper.make_node(op, inputs, [output], name=output, **attrs), linear)
        return output

    def _carry(self, y: str) -> None:
        p = self._node("Relu", [y], f"{y}#p", False)
        n = self._node("Relu", [self._negate(y)], f"{y}#n", False)
        self.pair[y] = (p, n)

    def _split_weighted(self, n: onnx.NodeProto) -> None:
        """W(y) -> W(P) + W'(N), W' with negated weights and no bias."""
        p, m = self.pair[n.input[0]]
        out = n.output[0]
        a = attributes(n)
        keep = {k: v for k, v in a.items() if k != "beta"}
        from_p = self._node(n.op_type, [p, *n.input[1:]], f"{out}#from_p", True, **a)
        from_n = self._node(n.op_type, [m, self._neg_const(n.input[1])], f"{out}#from_n", True, **keep)
        self._node("Sum", [from_p, from_n], out, True)
        self.split[out] = (from_p, from_n)

    def _absorb(self, n: onnx.NodeProto, x: str) -> bool:
        """The affine op (BatchNorm, a constant added or factor) that alone reads a split
        W(P) + (-W)(N), applied to both terms (a constant added to the first only) so that
        it folds into their weighted ops instead of following the add; False when ``n`` is
        not such an op."""
        op, out = n.op_type, n.output[0]
        if self.readers.get(x, 0) != 1 or op not in ("BatchNormalization", "Add", "Sub", "Mul", "Div") \
                or (op in ("Sub", "Div") and n.input[0] != x):
            return False
        p, m = self.split[x]
        if op == "BatchNormalization":  # BN(a + b) = BN(a) + s b / sd: a BN of mean and shift 0
            eps = {k: v for k, v in attributes(n).items() if k == "epsilon"}
            zero = self._node("Sub", [n.input[3], n.input[3]], f"{out}#zero", False)
            new_p = self._node(op, [p, *n.input[1:5]], f"{out}#from_p", True, **eps)
            new_m = self._node(op, [m, n.input[1], zero, zero, n.input[4]], f"{out}#from_n", True, **eps)
        else:
            new_p = self._node(op, [p if t == x else t for t in n.input], f"{out}#from_p", True)
            new_m = m if op in ("Add", "Sub") else \
                self._node(op, [m if t == x else t for t in n.input], f"{out}#from_n", True)
        self._node("Sum", [new_p, new_m], out, True)
        self.split[out] = (new_p, new_m)
        return True

    def _split_add(self, n: onnx.NodeProto) -> None:
        """y + z -> Sum(P, -1 * N, z)."""
        ins: list[str] = []
        for t in n.input:
            if t in self.pair:
                p, m = self.pair[t]
                ins += [p, self._node("Mul", [m, _MINUS_ONE], f"{t}#n_skip", False)]
            elif t:
                ins.append(t)
        self._node("Sum", ins, n.output[0], any(self.linear.get(t, False) for t in ins))

    def _neg_const(self, c: str) -> str:
        name = f"{c}#minus"
        if name not in self.producer:
            self._node("Neg", [c], name, False)
        return name

    def _negate(self, y: str) -> str:
        """A tensor equal to -y, built from the ops that compute y (see the module docstring)."""
        if y in self.negated:
            return self.negated[y]
        name = f"{y}#minus"
        n = self.producer.get(y)
        if n is not None and n.op_type in ("Mul", "Div") and len(_acts(n, self.consts)) == 1 \
                and (n.op_type == "Mul" or n.input[0] not in self.consts):  # -(c x) = (-c) x
            ins = [self._neg_const(t) if t in self.consts else t for t in n.input]
            out = self._node(n.op_type, ins, name, self.linear.get(y, False))
        elif not self.linear.get(y, False) or n is None:
            out = self._node("Mul", [y, _MINUS_ONE], name, False)
        elif n.op_type in _WEIGHTED:
            ins = [n.input[0], self._neg_const(n.input[1])]
            if n.op_type == "Gemm" and len(n.input) > 2 and n.input[2]:
                ins.append(self._neg_const(n.input[2]))
            elif n.op_type == "Conv" and len(n.input) > 2 and n.input[2]:
                ins.append(self._neg_const(n.input[2]))
            out = self._node(n.op_type, ins, name, True, **attributes(n))
        elif n.op_type == "BatchNormalization":  # -(s (x - m) / sd + b) = (-s) (x - m) / sd + (-b)
            ins = [n.input[0], self._neg_const(n.input[1]), self._neg_const(n.input[2]), *n.input[3:5]]
            keep = {k: v for k, v in attributes(n).items() if k in ("epsilon", "spatial")}
            out = self._node(n.op_type, ins, name, True, **keep)
        elif n.op_type in ("Add", "Sub") and len(_acts(n, self.consts)) == 1:
            ins = [self._neg_const(t) if t in self.consts else self._negate(t) for t in n.input]
            out = self._node(n.op_type, ins, name, True)
        elif n.op_type in ("Add", "Sum") and _is_act_add(n, self.consts):
            out = self._node("Sum", [self._negate(t) for t in n.input], name, True)
        elif n.op_type == "Concat":
            out = self._node("Concat", [self._negate(t) for t in n.input], name, True, **attributes(n))
        elif n.op_type in _PASS_THROUGH:
            ins = [self._negate(n.input[0]), *n.input[1:]]
            out = self._node(n.op_type, ins, name, True, **attributes(n))
        else:
            raise _CannotNegate(y)
        self.negated[y] = out
        return out
