"""Scales and integers: every tensor gets a scale ``out_scale`` (the real value of one
integer unit, per step on average), every weighted node integer weights that use the full
``weight_bits`` range, every IF layer its threshold ``theta = round(lam / scale of its
input)`` (independent of T). The same pass re-derives the integers after training changed
the float weights (:mod:`.requant`), so what is trained is what is written."""

from __future__ import annotations

import numpy as np

from ..calibrate.statistics import Calibration
from ..errors import ModelError
from ..ir import (AddNode, AffineNode, AvgPool2dNode, ConcatNode, DenseNode, FlattenNode, Graph,
                  IFNode, InputNode, MaxPool2dNode, Node, PadNode, ReshapeNode, WeightedNode)
from ..ir.structure import tensor_kinds
from ..ir.options import ConversionOptions


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


# A channel's weights may resolve at most 2^CHANNEL_GAIN_BITS times finer than its layer's
# largest weight allows: its biases grow by that factor at most.
CHANNEL_GAIN_BITS = 4


def _weight_scales(wr: np.ndarray, qmax: int, floor: np.ndarray | None = None) -> np.ndarray:
    """The real value of one weight integer, per output channel (shape (C,)): the layer's
    largest weight at ``qmax`` for every channel, or (a ``floor`` given: the scale below
    which a channel's threshold would pass its membrane) each channel's own largest, so that
    a channel of small weights (a depthwise filter, a BatchNorm-scaled one) keeps all its
    levels. A channel's scale never makes its neurons' largest possible input (the sum of
    its integer weights' magnitudes) larger than the layer's largest under one scale: what a
    target's current limit accepted per layer, it accepts per channel."""
    layer = _natural_scale(wr, qmax)
    c = wr.shape[0]
    if floor is None:
        return np.full(c, layer)
    mag = np.abs(wr.reshape(c, -1)).astype(np.float64)
    mass = mag.sum(axis=1)
    same_sum = layer * mass / mass.max() if mass.max() > 0 else np.zeros(c)
    s = np.maximum.reduce([mag.max(axis=1) / qmax, same_sum, np.full(c, layer / 2 ** CHANNEL_GAIN_BITS),
                           np.broadcast_to(floor, (c,))])
    return np.minimum(s, layer)


def output_scale_per_weight(n: WeightedNode) -> np.ndarray:
    """The scale of the output channel each weight of ``n`` writes, broadcastable to the
    weights' layout (a real weight is ``weight_int * this / input_scale_per_weight``)."""
    full = np.broadcast_to(np.asarray(n.out_scale, np.float64), tuple(n.shape))
    per_c = full.reshape(n.shape[0], -1)[:, 0] if len(n.shape) > 1 else full
    return per_c.reshape((-1,) + (1,) * (np.ndim(n.weight) - 1)).copy()


def unit_scales(graph: Graph, n: WeightedNode) -> tuple[np.ndarray, np.ndarray]:
    """For weighted node ``n`` of converted ``graph``: the scale of the input each weight
    reads and of the output channel each writes, both broadcastable to the weights (the
    second's ``reshape(-1)`` to the bias), so that a real weight is ``weight_int * s_out /
    s_in`` and a real bias ``bias_int * s_out``."""
    src = graph[n.inputs[0]]
    return input_scale_per_weight(n, src.out_scale, src.shape), output_scale_per_weight(n)


def _quantize(n: WeightedNode, wr: np.ndarray, out_scale: np.ndarray, qmax: int, bias_mode: str,
              exp: int = 0) -> None:
    """Weights: a ``qmax`` mantissa at per-channel scale ``out_scale``, times 2^exp (so one
    integer unit, the node's scale, is ``out_scale / 2^exp``: thresholds and biases gain
    ``exp`` bits)."""
    s = np.asarray(out_scale, np.float64).reshape(-1)
    # in place from here: VGG's fc6 is 392 MB a copy
    q = np.divide(wr, s.astype(np.float32).reshape((-1,) + (1,) * (wr.ndim - 1)))
    np.clip(np.rint(q, out=q), -qmax, qmax, out=q)
    if exp:
        q *= 2 ** exp
    n.weight_int = q.astype(np.int32)  # bits + exp <= 24
    n.weight_exp = exp
    s = s / 2 ** exp
    bias = n.bias if n.bias is not None else np.zeros(wr.shape[0])
    n.bias_int = np.rint(np.asarray(bias, np.float64) / s).astype(np.int64)
    n.bias_mode = bias_mode
    n.out_scale = _compact(s.reshape((-1,) + (1,) * (len(n.shape) - 1)), tuple(n.shape))


def _v_init(th: np.ndarray, mode: str, old_th: np.ndarray | None, old_v: np.ndarray | None,
            shape: tuple[int, ...], membrane_bits: int) -> np.ndarray:
    """The initial membrane for thresholds ``th``: half of it or zero (``mode``), plus the
    offset from that default, in thresholds, that the layer's former integers held (a
    calibrated initial membrane, passes.calibrate_bias), so requantization keeps it."""
    base = (th // 2) if mode == "half" else np.zeros_like(th)
    if old_v is None or old_th is None:
        return base
    old_base = (old_th // 2) if mode == "half" else np.zeros_like(old_th)
    frac = (np.asarray(old_v, np.float64) - old_base) / np.asarray(old_th, np.float64)
    if not np.any(frac):
        return base
    top = 2 ** (membrane_bits - 1) - 1
    v = np.clip(base + np.rint(frac * th), -top, top)
    return _compact(v, shape).astype(np.int64)


def _feeds_add_only(g: Graph, name: str) -> bool:
    """Whether node ``name``'s only consumer is an add (a weighted node then takes the add's
    scale, shared by all its inputs)."""
    consumers = g.consumers(name)
    return len(consumers) == 1 and isinstance(consumers[0], AddNode)


def _channel_floor(g: Graph, name: str) -> np.ndarray | None:
    """Where every reader of node ``name`` is an IF layer (whose thresholds take any per-
    channel scale): the smallest scale per channel that keeps their thresholds within a
    quarter of their membranes' range (room for the charge above a threshold). None where
    the scale may not vary by channel: an output's (readouts compare its integers across
    channels) or one another kind of node reads."""
    consumers = g.consumers(name)
    if not consumers or name in g.outputs or not all(isinstance(c, IFNode) for c in consumers):
        return None
    c = g[name].shape[0]
    return np.max([np.broadcast_to(np.asarray(n.lam, np.float64).reshape(-1), (c,)) / 2 ** (n.membrane_bits - 2)
                   for n in consumers], axis=0)


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
    pending: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # weighted nodes feeding an add: (weights, scales)
    kinds = tensor_kinds(g)
    shares = {n.name for n in g.nodes if isinstance(n, WeightedNode) and _feeds_add_only(g, n.name)}
    floors = {n.name: _channel_floor(g, n.name) for n in g.nodes
              if opts.weight_scale == "channel" and isinstance(n, (WeightedNode, AddNode))}
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
                pending[n.name] = (wr, _weight_scales(wr, qmax, floors.get(g.consumers(n.name)[0].name)))
                continue
            _quantize(n, wr, _weight_scales(wr, qmax, floors.get(n.name)), qmax,
                      "first_step" if once[n.name] else "every_step", opts.weight_exp)
        elif isinstance(n, AddNode):
            target = np.max([pending[i][1] for i in n.inputs], axis=0)  # per channel, or all equal
            for i in n.inputs:
                src = g[i]
                _quantize(src, pending.pop(i)[0], target, qmax, "first_step" if once[i] else "every_step",
                          opts.weight_exp)
                scale[i] = src.out_scale
            n.out_scale = scale[n.inputs[0]]  # the inputs' shared scale
            once[n.name] = all(once[i] for i in n.inputs)
        elif isinstance(n, IFNode):
            sc = _channel_scale(n, scale[n.inputs[0]], n.shape)
            lam = np.broadcast_to(n.lam, sc.shape) if n.lam.size in (1, sc.size) else None
            if lam is None:
                raise ModelError(f"layer '{n.name}': {n.lam.size} scales for {sc.size} channels")
            src = ins[0]
            if isinstance(src, AvgPool2dNode) and isinstance(g[src.inputs[0]], IFNode):
                # a relay (frontend.relay): an average of spikes never carries more than one of
                # them, so its scale need not pass its input layer's (threshold <= the window);
                # a near-silent input channel would otherwise give a threshold past any register
                lam = np.minimum(lam, _channel_scale(n, scale[src.inputs[0]], n.shape))
                n.lam = np.array(lam, np.float64)
            theta = np.maximum(1, np.rint(lam / sc)).astype(np.int64)
            shape_c = (-1,) + (1,) * (len(n.shape) - 1)
            old_th, old_v = n.threshold, n.v_init
            n.threshold = _compact(theta.reshape(shape_c), n.shape).astype(np.int64)
            n.v_init = _v_init(n.threshold, opts.v_init, old_th, old_v, n.shape, n.membrane_bits)
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
