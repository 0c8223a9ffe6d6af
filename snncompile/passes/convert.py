"""Primitive conversion: an ANN graph plus activation scales becomes an integer SNN graph.

Every ReLU becomes a non-leaky IF layer whose spike count over T steps stands for the
activation: a count c of a layer with scale ``lam`` means ``lam * c / T``. Every tensor gets a
scale ``out_scale`` (the real value of one integer unit, per step on average), and every
weighted node integer weights chosen so that its largest weight uses the full ``weight_bits``
range. Thresholds follow from the scales: ``theta = round(lam / scale of the IF's input)``,
independent of T. Residual adds need equal scales on all their inputs; an input that is not
the exclusive output of a weighted node gets an identity affine node, so one integer
multiplier aligns it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..calibrate.statistics import Calibration
from ..errors import ModelError, UsageError
from ..ir.structure import tensor_kinds
from ..ir import (INPUT_MODES, RESET_MODES, SPIKE_MODES, AddNode, AffineNode, AvgPool2dNode, ConcatNode,
                 Conv2dNode, DenseNode, FlattenNode, Graph, IFNode, InputNode, MaxPool2dNode,
                 Node, PadNode, ReluNode, ReshapeNode, WeightedNode)

V_INIT_MODES = ("half", "zero")


@dataclass(frozen=True)
class ConversionOptions:
    """Choices of the primitive conversion (see docs/semantics.md)."""

    timesteps: int = 16
    weight_bits: int = 16
    input_bits: int = 8
    input_mode: str = "once"       # "once": all charge at t = 0 (PTL); "every_step" (TL)
    reset: str = "subtract"
    v_init: str = "half"           # membrane starts at half the threshold: counts round, not floor
    membrane_bits: int = 32
    weight_exp: int = 0            # Loihi-style: weights = (weight_bits)-bit mantissa * 2^weight_exp
    spikes: str = "binary"         # "signed": a neuron can take a spike back (-1), see IFNode

    def check(self) -> None:
        if self.timesteps < 1:
            raise UsageError(f"--timesteps must be at least 1, got {self.timesteps}")
        if not 2 <= self.weight_bits <= 24:
            raise UsageError(f"--bits must lie in 2..24, got {self.weight_bits}")
        if not 0 <= self.weight_exp <= 8 or self.weight_bits + self.weight_exp > 24:
            raise UsageError(f"--weight-exp must lie in 0..8 with --bits + --weight-exp <= 24, got "
                             f"{self.weight_exp} (with --bits {self.weight_bits})")
        if not 2 <= self.input_bits <= 24:
            raise UsageError(f"--input-bits must lie in 2..24, got {self.input_bits}")
        if self.input_mode not in INPUT_MODES:
            raise UsageError(f"input mode '{self.input_mode}' not in {INPUT_MODES}")
        if self.reset not in RESET_MODES:
            raise UsageError(f"reset '{self.reset}' not in {RESET_MODES}")
        if self.v_init not in V_INIT_MODES:
            raise UsageError(f"v_init '{self.v_init}' not in {V_INIT_MODES}")
        if not 8 <= self.membrane_bits <= 52:
            raise UsageError(f"membrane bits must lie in 8..52, got {self.membrane_bits}")
        if self.spikes not in SPIKE_MODES:
            raise UsageError(f"spikes '{self.spikes}' not in {SPIKE_MODES}")
        if self.spikes == "signed" and self.reset != "subtract":
            raise UsageError("signed spikes need reset by subtraction: a negative spike gives back "
                             "the threshold a spike took", "drop --reset zero, or use --spikes binary")
        if self.reset == "zero" and self.input_mode == "once":
            raise UsageError("reset-to-zero neurons lose the charge an input injected once carries "
                             "beyond one threshold", "use --input-mode every_step with --reset zero")


def convert(ann: Graph, calib: Calibration, opts: ConversionOptions) -> Graph:
    """The integer SNN graph for an ANN graph and its activation scales."""
    opts.check()
    if ann.is_spiking:
        raise ModelError("the graph is already converted")
    pools = [n.name for n in ann.nodes if isinstance(n, MaxPool2dNode)]
    if opts.spikes == "signed" and pools:
        raise UsageError(f"max pool '{pools[0]}' cannot read signed spikes: a spike-count maximum is "
                         "defined only for counts that never fall",
                         "use --spikes binary, or average pooling (or a stride-2 convolution) in the model")
    g = align_add_inputs(ann)
    g = relu_to_if(g, calib, opts)
    g = assign_scales(g, calib, opts)
    g.timesteps = opts.timesteps
    g.meta["conversion"] = asdict(opts) | {"normalization": calib.method}
    g.validate()
    return g


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


def _compact(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The smallest array broadcastable to ``shape`` holding the same values: all-equal ->
    (1, ..), uniform per channel -> (C, 1, ..), else the full array."""
    full = np.broadcast_to(np.asarray(a, np.float64), shape)
    flat = full.reshape(-1)
    if np.all(flat == flat[0]):
        return np.full((1,) * len(shape), flat[0])
    if len(shape) > 1:
        per_c = full.reshape(shape[0], -1)
        if np.all(per_c == per_c[:, :1]):
            return per_c[:, 0].reshape((shape[0],) + (1,) * (len(shape) - 1)).copy()
    return np.array(full)


def _channel_scale(node: Node, scale: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Per-channel vector of a scale that must not vary within a channel."""
    s = _compact(scale, shape)
    if len(shape) > 1 and s.size not in (1, shape[0]):
        raise ModelError(f"node '{node.name}' ({node.op}) reads a tensor whose scale varies within a "
                         f"channel; this layout cannot be converted",
                         "avoid reshaping a flattened vector back into an image before this layer")
    return np.broadcast_to(s.reshape(-1), (shape[0],)).copy() if len(shape) > 1 or s.size == 1 \
        else s.reshape(-1).copy()


def input_scale_per_weight(n: WeightedNode, in_scale: np.ndarray, in_shape: tuple[int, ...]) -> np.ndarray:
    """The scale of the input element each weight of ``n`` reads, broadcastable to the
    weights' layout (conversion multiplies float weights by it before quantizing; reports
    divide by it to recover real weights from integers)."""
    if isinstance(n, DenseNode):
        return np.broadcast_to(in_scale, in_shape).reshape(1, -1)
    sc = _channel_scale(n, in_scale, in_shape)
    if isinstance(n, AffineNode):
        return sc
    cout, cin_g = n.weight.shape[:2]
    group_of_out = np.arange(cout) // (cout // n.groups)
    idx = group_of_out[:, None] * cin_g + np.arange(cin_g)[None, :]
    return sc[idx][:, :, None, None]


def _real_weights(n: WeightedNode, in_scale: np.ndarray, in_shape: tuple[int, ...]) -> np.ndarray:
    """Float weights times the scale of the input each one reads."""
    # float32 keeps large layers cheap; its relative error (6e-8) is far below the
    # resolution of any weight width we quantize to (at most 24 bits).
    return np.asarray(n.weight, np.float32) * input_scale_per_weight(n, in_scale, in_shape).astype(np.float32)


def _natural_scale(wr: np.ndarray, qmax: int) -> float:
    m = float(np.abs(wr).max(initial=0.0))
    return m / qmax if m > 0 else 1.0


def _quantize(n: WeightedNode, wr: np.ndarray, out_scale: float, qmax: int, bias_mode: str,
              exp: int = 0) -> None:
    """Weights: a ``qmax`` mantissa at scale ``out_scale``, times 2^exp (so one integer unit,
    the node's scale, is ``out_scale / 2^exp``: thresholds and biases gain ``exp`` bits)."""
    q = np.rint(wr / np.float32(out_scale))
    n.weight_int = (np.clip(q, -qmax, qmax, out=q) * 2 ** exp).astype(np.int32)  # bits + exp <= 24
    n.weight_exp = exp
    out_scale = out_scale / 2 ** exp
    bias = n.bias if n.bias is not None else np.zeros(wr.shape[0])
    n.bias_int = np.rint(np.asarray(bias, np.float64) / out_scale).astype(np.int64)
    n.bias_mode = bias_mode
    n.out_scale = np.full((1,) * len(n.shape), out_scale)


def _feeds_add_only(g: Graph, name: str) -> bool:
    """Whether node ``name``'s only consumer is an add (a weighted node then takes the add's
    scale, shared by all its inputs)."""
    consumers = g.consumers(name)
    return len(consumers) == 1 and isinstance(consumers[0], AddNode)


def assign_scales(graph: Graph, calib: Calibration, opts: ConversionOptions,
                  input_scale: np.ndarray | None = None, reuse: frozenset[str] = frozenset()) -> Graph:
    """Scale every tensor, quantize every weighted node, set every threshold.

    ``input_scale`` keeps a given input scale (re-quantizing a converted graph after its float
    weights changed) instead of deriving it from ``calib.input_absmax``. Nodes in ``reuse``
    already hold what this pass would give them (it ran on the same values of them and of
    everything before them): they are read, not derived again, so re-quantizing after a
    change to a few nodes costs only those and what follows them. An add is derived together
    with the weighted nodes feeding it (they share its scale)."""
    g = graph.copy()
    qmax = 2 ** (opts.weight_bits - 1) - 1
    scale: dict[str, np.ndarray] = {}
    once: dict[str, bool] = {}   # tensor carries charge at t = 0 only (analog input, mode once)
    pending: dict[str, tuple[np.ndarray, float]] = {}  # weighted nodes feeding an add
    kinds = tensor_kinds(g)
    shares = {n.name for n in g.nodes if isinstance(n, WeightedNode) and _feeds_add_only(g, n.name)}
    for n in g.nodes:
        ins = [g[i] for i in n.inputs]
        if isinstance(n, AddNode) and len({i in reuse for i in n.inputs if i in shares} | {n.name in reuse}) > 1:
            raise ValueError(f"add '{n.name}' and the weighted nodes sharing its scale must be reused together")
        if n.name in reuse:
            once[n.name] = (opts.input_mode == "once" if isinstance(n, InputNode)
                            else not isinstance(n, (IFNode, MaxPool2dNode)) and all(once[i] for i in n.inputs))
            scale[n.name] = n.out_scale
            continue
        if isinstance(n, InputNode):
            n.mode, n.bits = opts.input_mode, opts.input_bits
            if input_scale is not None:
                n.out_scale = np.asarray(input_scale, np.float64).reshape((1,) * len(n.shape))
            else:
                amax = calib.input_absmax if calib.input_absmax > 0 else 1.0
                n.out_scale = np.full((1,) * len(n.shape), amax / (2 ** (opts.input_bits - 1) - 1))
            once[n.name] = opts.input_mode == "once"
        elif isinstance(n, WeightedNode):
            wr = _real_weights(n, scale[n.inputs[0]], ins[0].shape)
            once[n.name] = once[n.inputs[0]]
            if n.name in shares:
                pending[n.name] = (wr, _natural_scale(wr, qmax))
                continue
            _quantize(n, wr, _natural_scale(wr, qmax), qmax, "first_step" if once[n.name] else "every_step",
                      opts.weight_exp)
        elif isinstance(n, AddNode):
            target = max(pending[i][1] for i in n.inputs)
            for i in n.inputs:
                src = g[i]
                _quantize(src, pending.pop(i)[0], target, qmax, "first_step" if once[i] else "every_step",
                          opts.weight_exp)
                scale[i] = src.out_scale
            n.out_scale = np.full((1,) * len(n.shape), target / 2 ** opts.weight_exp)
            once[n.name] = all(once[i] for i in n.inputs)
        elif isinstance(n, IFNode):
            sc = _channel_scale(n, scale[n.inputs[0]], n.shape)
            lam = np.broadcast_to(n.lam, sc.shape) if n.lam.size in (1, sc.size) else None
            if lam is None:
                raise ModelError(f"layer '{n.name}': {n.lam.size} scales for {sc.size} channels")
            theta = np.maximum(1, np.rint(lam / sc)).astype(np.int64)
            shape_c = (-1,) + (1,) * (len(n.shape) - 1)
            n.threshold = _compact(theta.reshape(shape_c), n.shape).astype(np.int64)
            n.v_init = (n.threshold // 2) if opts.v_init == "half" else np.zeros_like(n.threshold)
            n.out_scale = _compact(np.asarray(n.lam, np.float64).reshape(shape_c), n.shape)
            once[n.name] = False
        elif isinstance(n, MaxPool2dNode):
            if kinds[n.inputs[0]] != "spikes":
                raise ModelError(f"max pool '{n.name}' reads '{ins[0].name}' ({ins[0].op}), not spikes: "
                                 f"spike-count max pooling needs a ReLU right before it",
                                 "put the ReLU before the MaxPool, or use AveragePool")
            n.out_scale = scale[n.inputs[0]]
            once[n.name] = False
        elif isinstance(n, AvgPool2dNode):
            sc = _channel_scale(n, scale[n.inputs[0]], ins[0].shape)
            k = n.kernel[0] * n.kernel[1]
            n.out_scale = _compact((sc / k).reshape((-1, 1, 1)), n.shape)
            once[n.name] = once[n.inputs[0]]
        elif isinstance(n, (FlattenNode, ReshapeNode)):
            full = np.broadcast_to(scale[n.inputs[0]], ins[0].shape).reshape(n.shape)
            n.out_scale = _compact(full, n.shape)
            once[n.name] = once[n.inputs[0]]
        elif isinstance(n, ConcatNode):
            parts = [np.broadcast_to(scale[i.name], i.shape) for i in ins]
            n.out_scale = _compact(np.concatenate(parts, axis=n.axis), n.shape)
            once[n.name] = all(once[i] for i in n.inputs)
        elif isinstance(n, PadNode):
            src = _compact(scale[n.inputs[0]], ins[0].shape)
            if src.size == 1 or (len(n.shape) > 1 and src.size == n.shape[0] and not any(n.pads[0::len(n.shape)])):
                n.out_scale = src
            else:
                k = len(n.shape)
                width = [(n.pads[i], n.pads[i + k]) for i in range(k)]
                n.out_scale = _compact(np.pad(np.broadcast_to(src, ins[0].shape), width, mode="edge"), n.shape)
            once[n.name] = once[n.inputs[0]]
        else:
            raise ModelError(f"node '{n.name}' ({n.op}) cannot be converted")
        scale[n.name] = n.out_scale
    return g.replace_nodes(g.nodes)
