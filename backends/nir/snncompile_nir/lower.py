"""The integer SNN as a NIR graph: one NIR node per IR node, integers written as they are.

NIR (the ``nir`` package) describes networks in continuous time with float parameters; it
leaves open what the IR pins down (bit widths, the time window, the input encoding). This
module writes only what NIR's own node semantics reproduce exactly under a time step of
``dt = 1``, and records the integer details in node metadata:

* ``if`` with reset to zero -> ``nir.IF`` (``r = 1``, ``v_reset = 0``, ``v_threshold =
  threshold - 1``: NIR's IF spikes at ``v > v_threshold``, ours at ``v >= threshold``, the same
  on integer membranes);
* ``if`` with reset by subtraction, which NIR's IF cannot say (it sets ``v = v_reset``) ->
  ``nir.I`` (the membrane) -> ``nir.Threshold`` (``threshold - 0.5``) -> ``nir.Scale``
  (``-threshold``) back into the ``I``: each spike takes the threshold off the membrane. Stepped
  with ``dt = 1``, the loop's edge carries the previous step's spikes, so the ``I`` holds our
  membrane before this step's reset, and the spikes are ours exactly;
* a non-zero initial membrane (``v_init``) has no NIR parameter and is refused (see
  :func:`nir_violations`);
* ``conv2d`` -> ``nir.Conv2d`` (grouped ones as the equal ungrouped weight), ``dense`` ->
  ``nir.Affine``, a per-channel ``affine`` -> a 1x1 ``nir.Conv2d`` with a diagonal weight
  (images) or a diagonal ``nir.Affine`` (vectors), all with their integer weights and the bias
  added every step;
* ``avgpool2d`` (an integer sum pool) -> ``nir.SumPool2d``; ``flatten`` (and a reshape to a
  vector) -> ``nir.Flatten`` over the per-sample axes;
* ``add`` -> ``nir.Scale`` of ones with one edge per input (NIR sums the edges into a node);
* every output -> ``nir.I`` (``r = 1``: the accumulator ``sum_t I[t]``) -> ``nir.Output``.

Anything else (max pools, concats, pads, first-step biases, a non-zero initial membrane,
uneven padding) is refused with a violation naming the layer: never
written approximately.
"""

from __future__ import annotations

import importlib.metadata
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from snncompile.ir import (AddNode, AffineNode, AvgPool2dNode, Conv2dNode, DenseNode, FlattenNode,
                           Graph, IFNode, InputNode, Node, ReshapeNode, WeightedNode)
from snncompile.plugin import Violation, weight_bits

FORMAT = "snncompile-nir"
FORMAT_VERSION = 1
GRAPH_FILE = "graph.nir"
INPUT_NODE = "input"

SUPPORTED = (InputNode, Conv2dNode, DenseNode, AffineNode, IFNode, AvgPool2dNode, FlattenNode,
             ReshapeNode, AddNode)
WHY_NOT = {
    "maxpool2d": ("NIR has no spike-count max pool",
                  "convert with --maxpool avg or --maxpool conv (an ANN rewrite into an average "
                  "pool or a stride-2 convolution, tuning recovers its loss)"),
    "concat": ("NIR 1.0 has no concatenation node", "remove the Concat from the model"),
    "pad": ("NIR has no padding node (only a convolution's own, even padding)",
            "fold the Pad into the next convolution's padding in the model"),
    "reshape": ("NIR has no reshape node (only Flatten)", "reshape only to flatten, in the model"),
}


@dataclass(frozen=True)
class NirViolation(Violation):
    """Something the IR holds that NIR cannot express (the layer, what, the value, why)."""

    def __str__(self) -> str:
        return (f"layer '{self.layer}': {self.quantity} {self.value} cannot be written as NIR "
                f"({self.limit}); fix: {self.fix}")


def nir_violations(graph: Graph) -> list[Violation]:
    """Every node NIR's semantics cannot reproduce exactly (all of them, not the first)."""
    out: list[Violation] = []
    for n in graph.nodes:
        if not isinstance(n, SUPPORTED) or (isinstance(n, ReshapeNode) and len(n.shape) != 1):
            why, fix = WHY_NOT.get(n.op, ("no NIR node for it", "remove it from the model"))
            out.append(NirViolation(n.name, "op", n.op, why, fix))
        if isinstance(n, IFNode) and n.v_init is not None and np.any(np.asarray(n.v_init) != 0):
            out.append(NirViolation(n.name, "initial membrane", int(np.max(np.abs(n.v_init))),
                                    "NIR's IF starts at v = 0", "--v-init zero"))
        if isinstance(n, WeightedNode) and n.bias_mode == "first_step" and _has_bias(n):
            out.append(NirViolation(n.name, "bias mode", "first_step",
                                    "NIR adds a bias at every step", "--input-mode every_step"))
        if isinstance(n, (Conv2dNode, AvgPool2dNode)):
            top, left, bottom, right = n.padding
            if (top, left) != (bottom, right):
                out.append(NirViolation(n.name, "padding", tuple(n.padding),
                                        "NIR pads both sides of an axis equally",
                                        "pad symmetrically in the model"))
    return out


def _has_bias(n: WeightedNode) -> bool:
    return n.bias_int is not None and bool(np.any(np.asarray(n.bias_int) != 0))


def nir_names(graph: Graph) -> dict[str, str]:
    """IR node name -> NIR node name: letters, digits and '_' only (IR names from ONNX hold
    '/' and '.', which HDF5 reads as groups and torch.fx as attributes), unique."""
    names: dict[str, str] = {}
    used = {INPUT_NODE}
    for n in graph.nodes:
        if isinstance(n, InputNode):
            names[n.name] = INPUT_NODE
            continue
        base = re.sub(r"[^A-Za-z0-9_]", "_", n.name).strip("_") or n.op
        if base[0].isdigit() or base.startswith("output"):
            base = f"n_{base}"
        name, k = base, 1
        while name in used:
            k += 1
            name = f"{base}_{k}"
        used.add(name)
        names[n.name] = name
    return names


def _f64(a: Any) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _scale_meta(n: Node) -> dict[str, Any]:
    return {} if n.out_scale is None else {"out_scale": _f64(n.out_scale).reshape(-1)}


def _weighted_meta(n: WeightedNode) -> dict[str, Any]:
    return {"weight_bits": int(weight_bits(n)), "weight_exp": int(n.weight_exp),
            "bias_mode": n.bias_mode}


def _bias(n: WeightedNode, size: int) -> np.ndarray:
    return _f64(n.bias_int) if n.bias_int is not None else np.zeros(size)


def ungroup(weight: np.ndarray, groups: int) -> np.ndarray:
    """A grouped convolution's weight (Cout, Cin/groups, kh, kw) as the equal ungrouped one
    (Cout, Cin, kh, kw), zero outside each group's block: nir 1.0.8 types a Conv2d's input
    as weight.shape[1] channels whatever its groups, so a grouped one fails nir.read."""
    w = _f64(weight)
    if groups == 1:
        return w
    cout, cin_g = w.shape[:2]
    full = np.zeros((cout, cin_g * groups) + w.shape[2:])
    per = cout // groups
    for g in range(groups):
        full[g * per:(g + 1) * per, g * cin_g:(g + 1) * cin_g] = w[g * per:(g + 1) * per]
    return full


def full_threshold(n: IFNode) -> np.ndarray:
    """The integer threshold of every neuron of the layer (the IR keeps one per channel)."""
    th = np.asarray(n.threshold).reshape((-1,) + (1,) * (len(n.shape) - 1))
    return np.broadcast_to(th, n.shape)


def _subtract_loop(n: IFNode, name: str, taken: dict) -> tuple[dict[str, Any], list[tuple[str, str]], str]:
    """The membrane ``I`` and reset ``Scale`` around the Threshold ``name`` of a subtracting IF
    layer: (nodes, loop edges, the node the layer's inputs feed)."""
    import nir

    v, reset = _free(f"{name}_v", taken), _free(f"{name}_reset", taken)
    nodes = {v: nir.I(r=np.ones(n.shape)),
             reset: nir.Scale(scale=-_f64(full_threshold(n)))}
    nodes[v].metadata = {"ir_name": n.name, "role": "membrane (before this step's reset)"}
    nodes[reset].metadata = {"ir_name": n.name, "role": "reset by subtraction: -threshold per spike"}
    return nodes, [(v, name), (name, reset), (reset, v)], v


def _free(name: str, taken: dict) -> str:
    while name in taken:
        name += "_"
    return name


def _node(n: Node, graph: Graph):
    """The NIR node of one IR node, and its metadata beyond ``ir_name``."""
    import nir

    in_shape = tuple(graph[n.inputs[0]].shape) if n.inputs else ()
    if isinstance(n, InputNode):
        return nir.Input(input_type={"input": np.array(n.shape)}), {
            "mode": n.mode, "bits": int(n.bits), "source": n.source,
            "encoding": "x_int = clip(round(x / out_scale), -(2^(bits-1)-1), 2^(bits-1)-1), "
                        "fed at every step"}
    if isinstance(n, Conv2dNode):
        top, left = n.padding[:2]
        return nir.Conv2d(input_shape=in_shape[1:], weight=ungroup(n.weight_int, n.groups),
                          stride=tuple(n.stride), padding=(top, left), dilation=tuple(n.dilation),
                          groups=1, bias=_bias(n, n.shape[0])), (_weighted_meta(n)
                                                                  | {"ir_groups": int(n.groups)})
    if isinstance(n, DenseNode):
        return nir.Affine(weight=_f64(n.weight_int), bias=_bias(n, n.shape[0])), _weighted_meta(n)
    if isinstance(n, AffineNode):
        c = n.shape[0]
        if len(n.shape) == 1:
            node = nir.Affine(weight=np.diag(_f64(n.weight_int)), bias=_bias(n, c))
        else:  # per channel on an image: a 1x1 convolution with a diagonal weight
            node = nir.Conv2d(input_shape=in_shape[1:], weight=ungroup(n.weight_int.reshape(c, 1, 1, 1), c),
                              stride=1, padding=0, dilation=1, groups=1, bias=_bias(n, c))
        return node, _weighted_meta(n) | {"ir_op": "affine"}
    if isinstance(n, IFNode):
        meta = {"threshold_int": np.asarray(n.threshold, np.int64).reshape(-1), "reset": n.reset,
                "v_init": 0, "membrane_bits": int(n.membrane_bits)}
        if n.reset == "subtract":  # the Threshold of the I -> Threshold -> Scale loop (to_nir)
            return nir.Threshold(threshold=_f64(full_threshold(n)) - 0.5), meta | {
                "spike_rule": "u >= threshold_int, u the membrane (node '<name>_v') before reset",
                "construction": "I (membrane) -> Threshold -> Scale(-threshold_int) -> I: reset by "
                                "subtraction, stepped with dt = 1, the loop edge carrying the "
                                "previous step's spikes"}
        th = _f64(full_threshold(n))
        node = nir.IF(r=np.ones(n.shape), v_threshold=th - 1.0, v_reset=np.zeros(n.shape))
        return node, meta | {"spike_rule": "v >= threshold_int, i.e. v > v_threshold on integer membranes"}
    if isinstance(n, AvgPool2dNode):
        return nir.SumPool2d(kernel_size=np.array(n.kernel), stride=np.array(n.stride),
                             padding=np.array(n.padding[:2])), {"ir_op": "avgpool2d (integer sum)"}
    if isinstance(n, (FlattenNode, ReshapeNode)):
        return nir.Flatten(input_type={"input": np.array(in_shape)}, start_dim=0, end_dim=-1), {
            "dims": "per sample (no batch axis)"}
    if isinstance(n, AddNode):
        return nir.Scale(scale=np.ones(n.shape)), {"ir_op": "add: NIR sums the edges into this node"}
    raise AssertionError(f"unsupported node {n.op} passed the check")  # nir_violations refuses it


def to_nir(graph: Graph):
    """The NIR graph (``nir.NIRGraph``) of an IR graph that :func:`nir_violations` accepts."""
    import nir

    names = nir_names(graph)
    nodes: dict[str, Any] = {}
    edges: list[tuple[str, str]] = []
    taken = set(names.values())
    for n in graph.nodes:
        node, meta = _node(n, graph)
        node.metadata = {"ir_name": n.name, "ir_op": n.op} | meta | _scale_meta(n)
        nodes[names[n.name]] = node
        fed = names[n.name]
        if isinstance(n, IFNode) and n.reset == "subtract":
            loop, loop_edges, fed = _subtract_loop(n, names[n.name], taken)
            taken |= set(loop)
            nodes |= loop
            edges += loop_edges
        edges += [(names[i], fed) for i in n.inputs]
    outputs = []
    for k, o in enumerate(graph.outputs):
        acc, out = f"{names[o]}_acc", ("output" if len(graph.outputs) == 1 else f"output_{k}")
        shape = tuple(graph[o].shape)
        nodes[acc] = nir.I(r=np.ones(shape))
        nodes[acc].metadata = {"ir_name": o, "role": "output accumulator: acc = sum over t of its "
                               "input; real output = out_scale * acc / T"} | _scale_meta(graph[o])
        nodes[out] = nir.Output(output_type={"output": np.array(shape)})
        nodes[out].metadata = {"ir_name": o}
        edges += [(names[o], acc), (acc, out)]
        outputs.append(out)
    inp = graph.input
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION,
            "snncompile_version": importlib.metadata.version("snncompile"),
            "timesteps": int(graph.timesteps or 0), "dt": 1.0,
            "time": "discrete steps t = 0..T-1 of length dt = 1; integrate with r * dt = 1",
            "input_mode": inp.mode, "input_bits": int(inp.bits), "outputs": ",".join(outputs)}
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta)


def write_graph(graph: Graph, directory: Path) -> Path:
    """Write ``directory/graph.nir`` with ``nir.write``."""
    import nir

    path = Path(directory) / GRAPH_FILE
    nir.write(str(path), to_nir(graph))
    return path
