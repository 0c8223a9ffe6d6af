"""Turn an ONNX model into a folded, validated ANN graph of the IR.

Steps: load and check the model; choose the output (stripping a trailing Softmax etc.);
keep only the nodes that output needs; walk them in order, constant-folding every node whose
inputs are all constants (with onnx's reference evaluator) and converting the others with the
registered op converters; report every problem at once; run the fold passes.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from .. import ir
from ..errors import ModelError, UnsupportedOpError
from ..passes import run_passes
from . import ops  # noqa: F401  (registers the converters)
from .context import ImportContext, describe
from .loader import load_onnx, prepare_model
from .outputs import choose_output
from .registry import CONVERTERS, UNSUPPORTED_NOTES, supported_ops

log = logging.getLogger("snncompile")

# Squashing activations a classifier or regressor may end with (never removed silently).
_OUTPUT_ACTIVATIONS = ("Sigmoid", "Tanh", "Softmax", "LogSoftmax", "HardSigmoid", "Softsign")

_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
                onnx.TensorProto.BFLOAT16}


@dataclass
class ImportResult:
    """What :func:`import_onnx` produces."""

    graph: ir.Graph          # folded ANN graph (float weights, ReluNode), validated
    warnings: list[str] = field(default_factory=list)
    input_name: str = ""     # the ONNX graph input
    output_name: str = ""    # the ONNX tensor the graph's output equals (logits before a Softmax)


def import_onnx(model: str | os.PathLike | onnx.ModelProto, output: str | None = None) -> ImportResult:
    """Import an ONNX model (path or ModelProto) as a folded ANN graph.

    ``output`` picks the ONNX tensor to compile when the model has several outputs; a trailing
    Softmax/LogSoftmax/ArgMax (and skl2onnx's ZipMap/label branch) is removed either way.
    Raises ModelError (UnsupportedOpError listing every problem) when it cannot be converted.
    """
    if isinstance(model, (str, os.PathLike)):
        source = Path(model).name
        model = load_onnx(model)
    else:
        model, source = prepare_model(model), ""
    g = model.graph
    in_name, per_sample, batch = _graph_input(g)
    producers = {o: n for n in g.node for o in n.output if o}
    graph_output, out_tensor = choose_output(model, producers, output)
    needed = _needed_nodes(g, producers, out_tensor)
    reads = [t for n in needed for t in n.input if t] + [out_tensor]
    used = set(reads)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    ctx = ImportContext(batch, opset, used, dict(Counter(reads)))
    for init in g.initializer:
        ctx.consts[init.name] = numpy_helper.to_array(init)
    ctx.add(ir.InputNode(name=in_name, shape=per_sample, source=in_name))

    _walk(ctx, needed, model, source)
    if out_tensor not in ctx.tensors:
        raise ModelError(f"output '{out_tensor}' does not depend on the network input "
                         f"'{in_name}' (it is a constant)", "choose another output with --output")
    graph = ir.Graph(ctx.nodes, [ctx.tensors[out_tensor]],
                     meta={"onnx_input": in_name, "onnx_output": out_tensor,
                           "onnx_graph_output": graph_output, "source": source})
    graph.validate()
    graph = run_passes(graph)
    if graph_output != out_tensor:
        log.info("compiling '%s' (the tensor before the trailing ops of output '%s')",
                 out_tensor, graph_output)
    for w in ctx.warnings:
        log.warning(w)
    return ImportResult(graph, list(ctx.warnings), in_name, out_tensor)


def _graph_input(g: onnx.GraphProto) -> tuple[str, tuple[int, ...], int]:
    """The one non-initializer input: its name, per-sample shape and batch size to assume."""
    inits = {i.name for i in g.initializer}
    inputs = [i for i in g.input if i.name not in inits]
    if len(inputs) != 1:
        raise ModelError(f"the model has {len(inputs)} inputs "
                         f"({', '.join(repr(i.name) for i in inputs)}); exactly one is supported",
                         "export a model with a single input tensor")
    vi = inputs[0]
    t = vi.type.tensor_type if vi.type.WhichOneof("value") == "tensor_type" else None
    if t is None or t.elem_type not in _FLOAT_TYPES:
        raise ModelError(f"input '{vi.name}' is not a float tensor",
                         "the network input must be float (N, C, H, W) or (N, F) data")
    dims = list(t.shape.dim) if t.HasField("shape") else []
    if len(dims) < 2:
        raise ModelError(f"input '{vi.name}' has rank {len(dims)}; expected a batch axis followed "
                         "by the sample shape, (N, C, H, W) or (N, F)",
                         "export with an explicit batch dimension")
    per_sample = []
    for d in dims[1:]:
        if not d.HasField("dim_value") or d.dim_value <= 0:
            raise ModelError(f"input '{vi.name}' has a dynamic dimension "
                             f"'{d.dim_param or '?'}' besides the batch axis",
                             "export with a fixed sample shape; only the batch axis may be dynamic")
        per_sample.append(int(d.dim_value))
    b = dims[0]
    batch = int(b.dim_value) if b.HasField("dim_value") and b.dim_value > 0 \
        else ImportContext.SENTINEL_BATCH
    return vi.name, tuple(per_sample), batch


def _needed_nodes(g: onnx.GraphProto, producers: dict[str, onnx.NodeProto],
                  out_tensor: str) -> list[onnx.NodeProto]:
    """The nodes ``out_tensor`` depends on, in graph order."""
    needed: set[int] = set()
    stack = [out_tensor]
    while stack:
        node = producers.get(stack.pop())
        if node is None or id(node) in needed:
            continue
        needed.add(id(node))
        stack.extend(t for t in node.input if t)
    return [n for n in g.node if id(n) in needed]


def _walk(ctx: ImportContext, nodes: list[onnx.NodeProto], model: onnx.ModelProto,
          source: str) -> None:
    """Fold or convert every node; collect all problems and raise them together."""
    unsupported: list[str] = []
    problems: list[tuple[str, str | None]] = []
    broken: set[str] = set()  # tensors that could not be produced
    for node in nodes:
        inputs = [t for t in node.input if t]
        if any(t in broken for t in inputs) and node.op_type in CONVERTERS:
            broken.update(node.output)
            continue
        if all(ctx.is_const(t) for t in inputs):
            try:
                _fold(ctx, node, model)
            except ModelError as e:
                problems.append((e.message, e.hint))
                broken.update(node.output)
            continue
        if node.op_type not in CONVERTERS:
            note = UNSUPPORTED_NOTES.get(node.op_type)
            if _is_silu(node, nodes):
                note = f"with the Mul after it, this is SiLU/Swish x * sigmoid(x); {note}"
            elif node.op_type in _OUTPUT_ACTIVATIONS and inputs:
                note = (f"{note}; if it is the network's final activation, compile the values "
                        f"before it with --output '{inputs[0]}' (output= in Python)")
            unsupported.append(f"{describe(node)} is not supported" + (f": {note}" if note else ""))
            broken.update(node.output)
            continue
        try:
            CONVERTERS[node.op_type](ctx, node)
        except ModelError as e:
            problems.append((e.message, e.hint))
            broken.update(node.output)
    if not unsupported and len(problems) == 1:
        raise ModelError(*problems[0])
    if unsupported or problems:
        lines = unsupported + [p for p, _ in problems]
        where = f"'{source}'" if source else "the model"
        hints = ["replace or remove these layers and re-export the model (a trailing "
                 "Softmax/LogSoftmax/ArgMax is removed automatically)"] if unsupported else []
        hints += [h for _, h in problems if h]
        raise UnsupportedOpError(
            f"cannot convert {where}: {len(lines)} problem(s):\n"
            + "\n".join(f"  - {line}" for line in lines)
            + (f"\nsupported ops: {', '.join(supported_ops())}" if unsupported else ""),
            lines, "; ".join(dict.fromkeys(hints)))


def _is_silu(node: onnx.NodeProto, nodes: list[onnx.NodeProto]) -> bool:
    """A Sigmoid whose output some Mul multiplies with the Sigmoid's own input."""
    if node.op_type != "Sigmoid" or not node.input:
        return False
    pair = {node.input[0], node.output[0]}
    return any(n.op_type == "Mul" and set(n.input) == pair for n in nodes)


def _fold(ctx: ImportContext, node: onnx.NodeProto, model: onnx.ModelProto) -> None:
    """Evaluate a node whose inputs are all constants with onnx's reference evaluator."""
    opsets = {o.domain: o.version for o in model.opset_import}
    ins = [helper.make_empty_tensor_value_info(t) for t in dict.fromkeys(t for t in node.input if t)]
    outs = [helper.make_empty_tensor_value_info(t) for t in node.output if t]
    try:
        ev = ReferenceEvaluator(helper.make_graph([node], "fold", ins, outs), opsets=opsets)
        values = ev.run(None, {vi.name: ctx.consts[vi.name] for vi in ins})
    except Exception as e:  # any failure of the evaluator is a problem of this node
        raise ModelError(f"{describe(node)}: cannot evaluate this constant expression "
                         f"({type(e).__name__}: {' '.join(str(e).split())[:200]})",
                         "simplify the model (e.g. onnxsim) or export with constant folding") from None
    for name, value in zip((o.name for o in outs), values):
        ctx.consts[name] = np.asarray(value)
