"""Spiking relays after average pools, under a fan-in limit.

An average pool is not a population: the layer after it reads the pool's window through it,
so a classifier after a global average pool over 7x7 reads 49 synapses per channel, and a
``--fanin 64`` limit leaves each logit one or two channels. A ReLU right after the pool
(``relu(avg(x)) = avg(x)`` for the non-negative ``x`` a pool reads in a converted network)
makes the pooled values a population of their own: its neurons read one window each, and
the next layer reads one synapse per channel. A map larger than the limit is pooled in
stages of exact local averages, each with its relay. The function of the network is unchanged; it
costs one more layer of spike-count quantization and one step of latency, so it is added only
where the composed connection exceeds the limit. Local average pools get one on the same
terms (LeNet's 2x2 pools before a 5x5 convolution: 600 composed inputs per neuron instead
of 150; an Inception branch's 3x3 pool before a 1x1 convolution: nine times its channels),
measured in docs/results.md.

It works on the ONNX model, like the other rewrites (:mod:`.rewrite`), so calibration, run
by onnxruntime on the rewritten model, sees the relay's activations.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .context import attributes

POOLS = ("GlobalAveragePool", "AveragePool", "ReduceMean")
PASS_THROUGH = ("Flatten", "Reshape", "Squeeze", "Identity", "Dropout")
WEIGHTED = ("Gemm", "MatMul", "Conv")


def constant_values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The values of the model's initializers, Constant nodes and Identity copies of those
    (an exporter's way of sharing one weight between layers)."""
    vals = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute:
            a = n.attribute[0]
            if a.name == "value":
                vals[n.output[0]] = numpy_helper.to_array(a.t)
        elif n.op_type == "Identity" and n.input and n.input[0] in vals:
            vals[n.output[0]] = vals[n.input[0]]
    return vals


def _non_negative(tensor: str, producer: dict[str, onnx.NodeProto], consts: dict[str, np.ndarray]) -> bool:
    """Whether ``tensor`` is never negative: a ReLU's or a clip at or above zero, seen
    through max and average pools, pads of zeros and reshapes."""
    n = producer.get(tensor)
    while n is not None and n.op_type in ("MaxPool", "AveragePool", "GlobalAveragePool",
                                          "GlobalMaxPool", "Pad") + PASS_THROUGH:
        if n.op_type == "Pad" and attributes(n).get("mode", "constant") != "constant":
            return False
        n = producer.get(n.input[0])
    if n is None:
        return False
    if n.op_type == "Relu":
        return True
    if n.op_type == "Clip":
        lo = attributes(n).get("min")
        if lo is None and len(n.input) > 1 and n.input[1]:
            lo = consts.get(n.input[1])
        return lo is not None and float(np.asarray(lo)) >= 0
    return False


def _window(n: onnx.NodeProto, shapes: dict[str, list[int]], consts: dict[str, np.ndarray]) -> int:
    """Inputs one output of global pool ``n`` averages: the whole feature map (0 when its
    size is unknown or ``n`` is not a global average over it)."""
    shape = shapes.get(n.input[0])
    if not shape or len(shape) != 4 or any(d <= 0 for d in shape[2:]):
        return 0
    if n.op_type == "AveragePool":
        a = attributes(n)
        if list(a.get("kernel_shape", [])) != list(shape[2:]) or any(a.get("pads", [0])):
            return 0
    elif n.op_type == "ReduceMean":
        axes = attributes(n).get("axes")
        if axes is None and len(n.input) > 1:
            axes = consts.get(n.input[1])
        if axes is None or sorted(int(a) % 4 for a in np.ravel(axes)) != [2, 3]:
            return 0
    return int(shape[2] * shape[3])


def _weight_fanin(n: onnx.NodeProto, consts: dict[str, np.ndarray]) -> int:
    """Inputs one output of weighted node ``n`` sums (0 when its weight is not a constant)."""
    w = consts.get(n.input[1]) if len(n.input) > 1 else None
    if w is None:
        return 0
    if n.op_type == "Conv":
        return int(np.prod(w.shape[1:]))
    if n.op_type == "Gemm" and attributes(n).get("transB", 0):
        return int(w.shape[1])
    return int(w.shape[0])


def _pool_window(n: onnx.NodeProto) -> int:
    """Inputs one output of local pool ``n`` reads: a relay's neurons read that many, so a
    window over the limit gets none (the limit's refusal names the pool instead)."""
    return int(np.prod(attributes(n).get("kernel_shape", [1])))


def _composed(pool: onnx.NodeProto, reader: onnx.NodeProto, direct: bool,
              shapes: dict[str, list[int]], consts: dict[str, np.ndarray]) -> tuple[int, int]:
    """Inputs one output of weighted ``reader`` sums through local average pool ``pool``,
    and without it (its own weights): per spatial axis a tap of the convolution covers a
    whole window, overlapping windows counted once; a dense layer after a flatten reads at
    most the whole map before the pool. (0, 0) when a shape or weight is unknown."""
    own = _weight_fanin(reader, consts)
    a = attributes(pool)
    kernel = list(a.get("kernel_shape", []))
    strides = list(a.get("strides", [1] * len(kernel)))
    if not own or len(kernel) != 2:
        return 0, 0
    if reader.op_type == "Conv" and direct:
        w = consts[reader.input[1]]
        ra = attributes(reader)
        dil = list(ra.get("dilations", [1, 1]))
        count = w.shape[1]
        for kc, kp, sp, d in zip(w.shape[2:], kernel, strides, dil):
            count *= kc * kp if d * sp >= kp else (kc - 1) * d * sp + kp
        return int(count), own
    before = shapes.get(pool.input[0])
    whole = int(np.prod(before[1:])) if before and all(d > 0 for d in before[1:]) else 0
    composed = own * _pool_window(pool)
    return (min(composed, whole) if whole else composed), own


def _stages(h: int, w: int, fanin: int) -> list[tuple[int, int]]:
    """Local pools (kernel = stride, dividing the map exactly) that bring an ``h`` x ``w`` map
    down to at most ``fanin`` positions, each window at most ``fanin``: a global average is
    the average of equal window averages, so the split is exact. Empty when the map is small
    enough already, or when no exact split exists (a prime side longer than ``fanin``)."""
    out: list[tuple[int, int]] = []
    while h * w > fanin:
        best = max(((a, b) for a in range(1, h + 1) if h % a == 0
                    for b in range(1, w + 1) if w % b == 0 and 1 < a * b <= fanin),
                   key=lambda ab: (ab[0] * ab[1], -abs(ab[0] - ab[1])), default=None)
        if best is None:
            return []
        out.append(best)
        h, w = h // best[0], w // best[1]
    return out


def relay_pools(model: onnx.ModelProto, fanin: int) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of ``model`` with a ReLU after each average pool of non-negative values whose
    window, composed into a weighted layer after it, makes that layer read more than
    ``fanin`` inputs (and more than without the pool); and the
    pools' output names, which the relays' outputs take over (empty, and the model returned
    as it is, when no pool needs a relay)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # shapes only size the windows: without them no relay is added
        inferred = model
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(inferred.graph.value_info) + list(inferred.graph.input)}
    consts = constant_values(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def weighted_after(tensor: str, direct: bool = True) -> list[tuple[onnx.NodeProto, bool]]:
        """The weighted nodes that read ``tensor``, each with whether it reads it directly
        (not through a flatten or reshape)."""
        found: list[tuple[onnx.NodeProto, bool]] = []
        for c in consumers.get(tensor, []):
            if c.op_type in PASS_THROUGH:
                found += weighted_after(c.output[0], direct and c.op_type in ("Identity", "Dropout"))
            elif c.op_type in WEIGHTED and c.input[0] == tensor:
                found.append((c, direct))
        return found

    chosen: list[onnx.NodeProto] = []
    local_pools: set[str] = set()
    for n in model.graph.node:
        if n.op_type not in POOLS or not _non_negative(n.input[0], producer, consts):
            continue
        window = _window(n, shapes, consts)
        after = weighted_after(n.output[0])
        if window > 1 and after and max(window * _weight_fanin(w, consts) for w, _ in after) > fanin:
            chosen.append(n)
        elif not window and n.op_type == "AveragePool" and after and _pool_window(n) <= fanin:
            counts = [_composed(n, w, d, shapes, consts) for w, d in after]
            if any(c > fanin and c > own for c, own in counts):
                chosen.append(n)
                local_pools.add(n.output[0])
    if not chosen:
        return model, []
    out = onnx.ModelProto()
    out.CopyFrom(model)
    names = {n.output[0] for n in chosen}
    nodes: list[onnx.NodeProto] = []
    for n in out.graph.node:
        if n.output[0] not in names:
            nodes.append(n)
            continue
        t = n.output[0]
        h, w = shapes[n.input[0]][2:] if t not in local_pools else (0, 0)
        for i, (a, b) in enumerate(_stages(h, w, fanin)):  # a window over fanin: in stages
            local = f"{t}_stage{i}"
            nodes += [helper.make_node("AveragePool", [n.input[0]], [f"{local}_pooled"],
                                       name=f"{n.name or t}_stage{i}", kernel_shape=[a, b], strides=[a, b]),
                      helper.make_node("Relu", [f"{local}_pooled"], [local], name=f"{n.name or t}_stage{i}_relay")]
            n.input[0] = local
            h, w = h // a, w // b
            if n.op_type == "AveragePool":
                del n.attribute[:]
                n.attribute.extend([helper.make_attribute("kernel_shape", [h, w])])
        n.output[0] = f"{t}_pooled"  # the relay takes the pool's tensor name
        nodes += [n, helper.make_node("Relu", [n.output[0]], [t], name=f"{n.name or t}_relay")]
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out, [n.output[0] for n in chosen]


def relay_message(pools: list[str], fanin: int) -> str:
    """The one line that says the relays were added, and why."""
    return (f"--fanin {fanin}: spiking neurons added after {len(pools)} average pool(s) "
            f"({', '.join(pools)}) so the next layer reads one synapse per pooled value, not "
            "the whole window through the pool; the function is unchanged (the pools read "
            "non-negative values)")
