"""What `snncompile inspect` reports: the imported graph node by node, or every op that
cannot be converted.

Fan-in is a property of a layer's neurons, not of an op: it is shown on the rows of the
layers that receive synapses (:func:`..ir.structure.fanin_layers`), counted through the
whole synapse chain (pools included) by :func:`..ir.structure.populations`, the one count
`evaluate`, `report`, `--fanin` and every backend's limit rule use."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import UnsupportedOpError
from ..frontend import import_onnx, load_onnx
from ..frontend.linear import carry_linear_values
from ..frontend.relay import relay_pools
from ..ir import Graph, IFNode, ReluNode, WeightedNode
from ..ir.structure import ann_macs, op_fanin, populations, weight_bits


def inspect_model(path: str, output: str | None = None) -> dict[str, Any]:
    """A JSON-able description of the model as snncompile will convert it."""
    model, carried = carry_linear_values(load_onnx(path))  # as convert imports it
    try:
        res = import_onnx(model, output=output)
    except UnsupportedOpError as e:
        return {"model": path, "convertible": False, "problems": list(e.problems), "layers": [],
                "warnings": [], "params": None, "ann_macs": None, "if_layers": 0}
    g = res.graph
    fanin = layer_fanin(g)
    layers = []
    for n in g.nodes:
        weighted = isinstance(n, WeightedNode)
        params = int(n.weight.size + (n.bias.size if n.bias is not None else 0)) if weighted else 0
        macs = int(np.prod(n.shape)) * op_fanin(n, nonzero=False) if weighted else 0
        layers.append({"name": n.name, "op": n.op, "inputs": list(n.inputs), "shape": list(n.shape),
                       "params": params, "fanin": fanin.get(n.name), "macs": macs})
    return {"model": path, "convertible": True, "problems": [], "layers": layers,
            "warnings": [r["message"] for r in carried] + list(res.warnings), "params": sum(r["params"] for r in layers),
            "ann_macs": ann_macs(g), "if_layers": sum(isinstance(n, ReluNode) for n in g.nodes),
            "input": {"name": res.input_name, "shape": list(g.input.shape)},
            "output": res.output_name}


def layer_fanin(graph: Graph) -> dict[str, int]:
    """Fan-in of each layer that receives synapses (IF layers or ReLUs, spiking max pools,
    outputs), as evaluate, the limit rules and --fanin count it."""
    return {p.name: p.max_fanin for p in populations(graph)}


def describe_graph(graph: Graph) -> list[dict[str, Any]]:
    """One JSON-able row per node of a (converted or not) graph: what the IR holds."""
    fanin = layer_fanin(graph)
    rows = []
    for n in graph.nodes:
        row: dict[str, Any] = {"name": n.name, "op": n.op, "inputs": list(n.inputs), "shape": list(n.shape)}
        if n.name in fanin:
            row["fanin"] = fanin[n.name]
        if isinstance(n, WeightedNode):
            row["params"] = int(n.weight.size + (n.bias.size if n.bias is not None else 0))
            row["weight_bits"] = weight_bits(n)
            row["bias_mode"] = n.bias_mode
        if isinstance(n, IFNode):
            row["threshold"] = [int(np.min(n.threshold)), int(np.max(n.threshold))]
            row["reset"] = n.reset
            row["membrane_bits"] = n.membrane_bits
        if n.out_scale is not None:
            row["scale"] = [float(np.min(n.out_scale)), float(np.max(n.out_scale))]
        rows.append(row)
    return rows


def inspect_artifact(path: str) -> dict[str, Any]:
    """A JSON-able description of a compiled output directory."""
    from ..targets.artifact import read_artifact

    art = read_artifact(path)
    g = art.graph
    return {"artifact": path, "timesteps": g.timesteps, "outputs": list(g.outputs),
            "input": {"shape": list(g.input.shape), "mode": g.input.mode, "bits": g.input.bits},
            "nodes": describe_graph(g), "ann_macs": ann_macs(g),
            "options": art.info.get("options", {}), "warnings": art.info.get("warnings", [])}


def inspect_target(path: str, target: str, target_options: dict[str, str] | None = None,
                   weight_bits: int | None = None, fanin: int | None = None,
                   output: str | None = None, calib: str | None = None,
                   progress: bool = False) -> dict[str, Any]:
    """What `convert MODEL --target TARGET` would choose from the target's profile (with
    ``--bits``/``--fanin``/``--calib`` as given), and every limit the result still breaks.
    The scales and the fitted --input-bits come from the function convert uses
    (:func:`.compile.calibrated`: the calibration data, else BatchNorm statistics or synthetic
    inputs), so the line is the profile convert records in compile.json; the violations are
    checked before convert's bias correction, which may still move a threshold. ``progress``:
    bars on stderr for the calibration and the width fit, as convert draws them."""
    from dataclasses import replace

    from ..data import load_npz
    from ..ir.options import ConversionOptions
    from ..passes.constrain import constrain
    from ..passes.convert import convert
    from ..targets.select import fit_violations, resolve_target
    from .compile import CompileRequest, calibrated, profiled, seed_everything

    backend = resolve_target(target, target_options)
    if backend is None:
        return {"target": target, "line": "target sim: the reference simulator takes every option",
                "profile": None, "violations": []}
    opts = ConversionOptions() if weight_bits is None else replace(ConversionOptions(), weight_bits=weight_bits)
    req = CompileRequest(model=path, out=None, target=target, target_options=dict(target_options or {}),
                         options=opts, fanin=fanin, output=output, calib=calib, progress=progress,
                         explicit=frozenset({"weight_bits"} if weight_bits is not None else ()))
    req, fit = profiled(req, backend)
    req.options.check()
    seed_everything(req.seed)
    model = carry_linear_values(load_onnx(path), fanin)[0]  # as convert imports it
    if fanin is not None:  # as convert adds them
        model = relay_pools(model, fanin)[0]
    ann = import_onnx(model, output=output).graph
    data = load_npz(calib, ann.input.shape, need_labels=False) if calib else None
    scales, req = calibrated(req, fit, model, ann, data)
    g = convert(ann, scales, req.options)
    violations = fit_violations(backend, constrain(g, req.options.weight_bits, fanin) if fanin else g)
    return {"target": backend.name, "line": fit.choice.line(), "profile": fit.choice.as_dict(),
            "violations": [str(v) for v in violations]}
