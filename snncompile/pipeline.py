"""The user-level jobs: compile a model to an output directory, evaluate a compiled one.

The CLI is a thin layer over these functions; scripts and tests can call them directly.
"""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from .artifact import read_artifact, write_artifact
from .calibrate import activation_scales, onnx_forward, weight_bounds
from .convert import ConversionOptions, convert
from .data import Dataset, load_npz
from .errors import UsageError
from .frontend import import_onnx, load_onnx
from .ir import IFNode
from .metrics import ann_macs, populations
from .simulator import simulate
from .targets import SIM, check_fit, lower_into, resolve_target, target_info

log = logging.getLogger("snncompile")
TARGETS = (SIM,)  # built in; backend plugins add theirs (see snncompile.targets)


@dataclass
class CompileRequest:
    """Everything `snncompile convert` takes."""

    model: str
    out: str
    target: str = "sim"
    calib: str | None = None
    norm: str = "percentile"
    percentile: float = 99.9
    output: str | None = None
    seed: int = 0
    force: bool = False
    options: ConversionOptions = ConversionOptions()
    target_options: dict[str, str] = field(default_factory=dict)  # --target-option KEY=VALUE


def seed_everything(seed: int) -> None:
    """Make a run reproducible from ``--seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def compile_model(req: CompileRequest) -> dict[str, Any]:
    """Import, calibrate, convert and write; returns a summary (also stored in compile.json).

    All inputs are checked before the output directory is created."""
    backend = resolve_target(req.target, req.target_options)
    req.options.check()
    if os.path.exists(req.out) and not req.force:
        raise UsageError(f"output directory '{req.out}' already exists",
                         "choose another -o, or pass --force to replace it")
    seed_everything(req.seed)
    t0 = time.perf_counter()
    model = load_onnx(req.model)
    imported = import_onnx(model, output=req.output)
    ann = imported.graph
    ann.meta["source"] = os.path.basename(req.model)
    calib_data = load_npz(req.calib, ann.input.shape, need_labels=False) if req.calib else None
    t_import = time.perf_counter() - t0
    if calib_data is not None:
        calib = activation_scales(model, ann, calib_data.x, req.norm, req.percentile, seed=req.seed)
    else:
        calib = weight_bounds(ann)
    snn = convert(ann, calib, req.options)
    if backend is not None:
        check_fit(backend, snn)  # every violation at once, before anything is written
    info = {
        "source": os.path.abspath(req.model), "target": req.target,
        "backend": target_info(backend, req.target), "seed": req.seed,
        "options": asdict(req.options), "normalization": calib.method,
        "calibration_samples": int(calib_data.x.shape[0]) if calib_data is not None else 0,
        "lam": {k: v.tolist() for k, v in calib.lam.items()},
        "warnings": list(imported.warnings) + list(calib.warnings),
        "import_seconds": round(t_import, 3),
        "convert_seconds": round(time.perf_counter() - t0, 3),
    }
    lower = (lambda tmp: lower_into(backend, snn, tmp)) if backend is not None else None
    write_artifact(req.out, snn, model, info, force=req.force, lower=lower)
    return {"out": req.out, "layers": len([n for n in snn.nodes if isinstance(n, IFNode)]),
            "timesteps": snn.timesteps, "warnings": info["warnings"], "target": req.target,
            "seconds": round(time.perf_counter() - t0, 3)}


def parse_timesteps(text: str | None) -> list[int] | None:
    """'8' or '4,8,16,32' -> [8] or [4, 8, 16, 32]."""
    if text is None or text == "":
        return None
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--timesteps takes integers separated by commas, got '{text}'") from None
    if not values or min(values) < 1:
        raise UsageError(f"--timesteps values must be >= 1, got '{text}'")
    return values


def _score(pred: np.ndarray, data: Dataset) -> dict[str, float]:
    if data.y is None:
        return {}
    if data.is_classification:
        return {"accuracy": float((pred.reshape(len(pred), -1).argmax(1) == data.y).mean())}
    err = pred.reshape(data.y.shape) - data.y
    return {"mse": float(np.mean(err ** 2))}


def evaluate_artifact(out: str, data_path: str, timesteps: list[int] | None = None,
                      batch_size: int = 256, progress: bool = False) -> dict[str, Any]:
    """ANN (onnxruntime) versus SNN (reference simulator) on a labelled data file."""
    art = read_artifact(out)
    g = art.graph
    data = load_npz(data_path, g.input.shape, need_labels=True)
    ann_pred = np.concatenate([b[g.meta["onnx_output"]] for b in onnx_forward(
        art.load_model(), g.meta["onnx_input"], [g.meta["onnx_output"]], data.x, batch_size)])
    ann_score = _score(ann_pred, data)
    macs = ann_macs(g)
    runs = []
    for T in (timesteps or [g.timesteps]):
        res = simulate(g, data.x, timesteps=T, batch_size=batch_size, progress=progress)
        snn_score = _score(res.output, data)
        layers = []
        for p in populations(g):
            row = {"name": p.name, "kind": p.kind, "synapses": p.synapses, "neurons": p.neurons,
                   "max_fanin": p.max_fanin, "weight_bits": p.weight_bits}
            if p.name in res.spike_counts:
                c = res.spike_counts[p.name].reshape(len(data.x), -1)
                row["spikes_per_sample"] = float(c.sum(1).mean())
                row["firing_rate"] = float(c.mean() / T)
                row["saturations"] = int(res.saturations.get(p.name, 0))
            else:
                row["spikes_per_sample"] = 0.0
            if isinstance(g[p.name], IFNode):
                row["threshold_max"] = int(np.max(g[p.name].threshold))
            layers.append(row)
        run = {"timesteps": T, "samples": int(len(data.x)),
               "synops_per_sample": float(res.synops.mean()),
               "ann_macs_per_sample": macs,
               "synops_per_mac": float(res.synops.mean() / macs) if macs else None,
               "layers": layers}
        for k, v in ann_score.items():
            run[f"ann_{k}"] = v
        for k, v in snn_score.items():
            run[f"snn_{k}"] = v
        if data.is_classification:
            run["agreement"] = float((res.output.argmax(1) == ann_pred.reshape(len(ann_pred), -1).argmax(1)).mean())
        runs.append(run)
    result = dict(runs[-1])
    if len(runs) > 1:
        result["sweep"] = [{k: r[k] for k in r if k != "layers"} for r in runs]
    return result

