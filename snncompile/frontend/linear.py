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

Before the split, :func:`fold_linear_values` removes the values that need no neurons at all:
where every weighted reader of y is a pointwise convolution W (1x1, stride 1, group 1:
MobileNetV2's expand convs and its last 1x1 conv) and y is a sum of group-1 convolutions
(with BatchNorm) of populations and of populations themselves (the identity skips), W(y) is
rewritten as the sum of W composed with each of those convolutions (float products, quantized
once at conversion like any weight), each reading its population directly. A pair costs one
more IF layer per value, each adding its own quantization and early-spike error, and on
MobileNetV2 those compound over the blocks; folded, the network has one IF layer per ReLU6 of
the ANN. The composed readers read the wider hidden layers (fan-in: the sum of the composed
kernels' inputs), so under ``--fanin`` a value folds only where they stay within it.

Why one module: folding and splitting are two treatments of the same linear values (the
same detection, the same notion of population and of weighted op); the split handles what
the fold leaves, and both must stay consistent about which values exist.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .context import attributes
from .relay import constant_values

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


def fold_message(values: list[str]) -> str:
    """The one line that says what :func:`fold_linear_values` did (never a silent change)."""
    return (f"{len(values)} linear value(s) read only by pointwise convolutions "
            f"({', '.join(values)}) folded into them: each reads the populations behind the value "
            "directly, with the composed weights (no neurons for the value; the network computes "
            "the same function)")


def split_message(values: list[str]) -> str:
    """The one line that says what :func:`split_linear_values` did (never a silent change)."""
    return (f"{len(values)} linear value(s) feeding a weighted op with no ReLU between "
            f"({', '.join(values)}) each carried by two ReLU populations, relu(y) and relu(-y) "
            "(MobileNetV2's linear bottleneck; the network computes the same function)")


def carry_linear_values(model: onnx.ModelProto, fanin: int | None = None
                        ) -> tuple[onnx.ModelProto, list[dict[str, Any]]]:
    """The model as convert imports it: each linear value that feeds a weighted op folded into
    its pointwise readers where they stay within ``fanin`` (:func:`fold_linear_values`), the
    rest carried by pairs (:func:`split_linear_values`); the function is unchanged. One record
    per pass applied (``pass``, ``nodes``, ``message``), in order, for compile.json."""
    model, folded = fold_linear_values(model, fanin)
    model, values = split_linear_values(model)
    return model, [{"pass": rewrite.__name__, "nodes": names, "message": message(names)}
                   for rewrite, names, message in ((fold_linear_values, folded, fold_message),
                                                   (split_linear_values, values, split_message))
                   if names]


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


# --- folding a linear value into its pointwise consumers -------------------------------------

@dataclass
class _Terms:
    """A linear value y as ``sum_k K_k(x_k) + bias``: each x_k a tensor that is not linear (a
    population or the input), K_k a convolution of group 1 (``kernel``, ``attrs``) or, for an
    identity term, a per-channel factor (``kernel`` of shape (M,), no attrs)."""

    terms: list[tuple[str, np.ndarray, dict]]
    bias: np.ndarray


def _conv_attrs_plain(a: dict) -> bool:
    """A convolution that is 1x1, stride 1, unpadded, undilated, of group 1: a matrix per
    position, so that it composes with any convolution before it."""
    return (a.get("group", 1) == 1 and all(s == 1 for s in a.get("strides", [1]))
            and not any(a.get("pads", [0])) and all(d == 1 for d in a.get("dilations", [1]))
            and a.get("auto_pad", "NOTSET") in ("NOTSET", "VALID"))


@dataclass
class _Folder:
    """Decomposes linear values into terms and composes pointwise consumers with them."""

    consts: set[str]
    init: dict[str, np.ndarray]
    producer: dict[str, onnx.NodeProto]
    linear: dict[str, bool]
    new_init: list[onnx.TensorProto] = field(default_factory=list)  # the composed weights

    def terms(self, y: str, channels: int) -> _Terms | None:
        """y as terms, or None where an op between y and the populations is not a group-1
        convolution, a BatchNorm after one, or an add of activations."""
        n = self.producer.get(y)
        if not self.linear.get(y, False):
            return _Terms([(y, np.ones(channels), {})], np.zeros(channels))
        if n is None:
            return None
        a = attributes(n)
        if n.op_type == "Conv" and _is_weighted(n, self.consts) and n.input[1] in self.init \
                and a.get("group", 1) == 1 and not self.linear.get(n.input[0], False) \
                and (len(n.input) < 3 or not n.input[2] or n.input[2] in self.init):
            k = self.init[n.input[1]].astype(np.float64)
            b = self.init[n.input[2]].astype(np.float64) if len(n.input) > 2 and n.input[2] else np.zeros(len(k))
            return _Terms([(n.input[0], k, a)], b)
        if n.op_type == "BatchNormalization" and all(t in self.init for t in n.input[1:5]):
            inner = self.terms(n.input[0], channels)
            if inner is None:
                return None
            gamma, beta, mean, var = (self.init[t].astype(np.float64) for t in n.input[1:5])
            s = gamma / np.sqrt(var + a.get("epsilon", 1e-5))
            scale = lambda k: k * s.reshape((-1,) + (1,) * (k.ndim - 1))  # noqa: E731
            return _Terms([(x, scale(k), at) for x, k, at in inner.terms], inner.bias * s + beta - mean * s)
        if _is_act_add(n, self.consts):
            parts = [self.terms(t, channels) for t in n.input if t]
            if any(p is None for p in parts):
                return None
            return _Terms([t for p in parts for t in p.terms], sum(p.bias for p in parts))
        return None

    def compose(self, w: onnx.NodeProto, y: _Terms) -> list[onnx.NodeProto]:
        """Nodes computing the pointwise conv ``w`` of the value ``y``: one convolution per
        term (``w`` composed with the term's convolution; the bias on the first) and their Sum
        under ``w``'s output name."""
        out = w.output[0]
        wm = self.init[w.input[1]].astype(np.float64)[:, :, 0, 0]
        bias = wm @ y.bias + (self.init[w.input[2]] if len(w.input) > 2 and w.input[2] else 0)
        nodes, outs = [], []
        for i, (x, k, a) in enumerate(y.terms):
            if k.ndim == 1:  # identity term: a 1x1 conv with the columns scaled
                kernel, attrs = (wm * k)[:, :, None, None], {}
            else:
                kernel, attrs = np.einsum("om,mikl->oikl", wm, k), a
            name = out if len(y.terms) == 1 else f"{out}#term{i}"
            ins = [x, f"{name}#w"]
            self.new_init.append(numpy_helper.from_array(kernel.astype(np.float32), ins[1]))
            if i == 0:
                ins.append(f"{name}#b")
                self.new_init.append(numpy_helper.from_array(np.asarray(bias, np.float32), ins[2]))
            nodes.append(helper.make_node("Conv", ins, [name], name=name, **attrs))
            outs.append(name)
        if len(outs) > 1:
            nodes.append(helper.make_node("Sum", outs, [out], name=out))
        return nodes

    def fanin(self, y: _Terms) -> int:
        return sum(len(k) if k.ndim == 1 else int(np.prod(k.shape[1:])) for _, k, _ in y.terms)


def fold_linear_values(model: onnx.ModelProto, fanin: int | None = None
                       ) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of ``model`` in which each linear value whose weighted readers are all pointwise
    convolutions (1x1, stride 1, group 1: MobileNetV2's expand and head convs) is no longer
    computed: each reader is composed with the convolutions that make the value (float
    products, quantized once later) and reads the populations behind it directly, and the
    names of those values (the model is returned unchanged when there is none). Where
    ``fanin`` is given, a value is folded only if every composed reader stays within it; a
    value that an add of a carried, unfolded value reads is not folded either (that add's
    pair would read the value's convolutions instead of its pair)."""
    g = model.graph
    consts = _constants(g) | {_MINUS_ONE}
    carried = _linear_values(g, consts, set())
    if not carried:
        return model, []
    init = constant_values(model)
    producer = {o: n for n in g.node for o in n.output if o}
    linear: dict[str, bool] = {}
    for n in g.node:  # the same rule as _linear_values, without the carriers
        ins = _acts(n, consts)
        lin = bool(ins) and n.op_type not in _POPULATION and (
            _is_weighted(n, consts) or any(linear.get(t, False) for t in ins))
        linear.update({o: lin for o in n.output if o})
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for t in _acts(n, consts):
            readers.setdefault(t, []).append(n)
    f = _Folder(consts, init, producer, linear)
    plan: dict[str, tuple[onnx.NodeProto, _Terms]] = {}  # reader's output -> (reader, y's terms)
    folded = []
    for y in reversed(_topological(g, carried)):  # an add after y decides first
        if any(_is_act_add(r, consts) and r.output[0] in carried and r.output[0] not in folded
               for r in readers[y]):
            continue  # the add's pair reads y's pair: folding y would only widen it
        ws = [r for r in readers[y] if _is_weighted(r, consts)]
        channels = {len(init[w.input[1]][0]) if w.input[1] in init else -1 for w in ws}
        ok = all(w.op_type == "Conv" and w.input[1] in init and init[w.input[1]].shape[2:] == (1, 1)
                 and _conv_attrs_plain(attributes(w))
                 and (len(w.input) < 3 or not w.input[2] or w.input[2] in init)
                 and not any(r.op_type == "BatchNormalization" for r in readers.get(w.output[0], []))
                 for w in ws) and len(channels) == 1
        terms = f.terms(y, channels.pop()) if ok else None
        if terms is None or (fanin is not None and f.fanin(terms) > fanin):
            continue
        plan.update({w.output[0]: (w, terms) for w in ws})
        folded.append(y)
    if not folded:
        return model, []
    folded = [y for y in _topological(g, carried) if y in folded]
    nodes: list[onnx.NodeProto] = []
    for n in g.node:
        nodes += f.compose(*plan[n.output[0]]) if n.output and n.output[0] in plan else [n]
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(_live(nodes, {o.name for o in g.output}))
    out.graph.initializer.extend(f.new_init)
    used = {t for n in out.graph.node for t in n.input}
    kept = [t for t in out.graph.initializer if t.name in used]
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept)
    return out, folded


def _live(nodes: list[onnx.NodeProto], outputs: set[str]) -> list[onnx.NodeProto]:
    """``nodes`` without those whose outputs nothing reads (in order)."""
    needed = set(outputs)
    keep = []
    for n in reversed(nodes):
        if any(o in needed for o in n.output):
            keep.append(n)
            needed.update(t for t in n.input if t)
    return keep[::-1]
