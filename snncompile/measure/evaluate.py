"""`snncompile evaluate`: a compiled network against its ANN on a labelled data file.

The ANN runs in onnxruntime on the artifact's own copy of the source model; the SNN runs
in the reference simulator at one or more time windows. Per run: scores, SynOps against the
ANN's MACs, and per population its neurons, synapses, fan-in, weight width and spikes.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..calibrate.statistics import onnx_forward
from ..data import load_npz
from ..errors import SnnCompileError, UsageError
from ..ir import IFNode
from ..ir.structure import ann_macs, populations
from ..sim.simulator import simulate
from ..targets.api import available_backends, get_backend
from ..targets.artifact import read_artifact
from ..targets.select import SIM

log = logging.getLogger("snncompile")


def parse_timesteps(text: str | None) -> list[int] | None:
    """'8' or '4,8,16,32' -> [8] or [4, 8, 16, 32]."""
    if text is None or text == "":
        return None
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--timesteps takes integers separated by commas, got '{text}'",
                         "e.g. --timesteps 16, or --timesteps 4,8,16,32 for a sweep") from None
    if not values or min(values) < 1:
        raise UsageError(f"--timesteps values must be >= 1, got '{text}'",
                         "e.g. --timesteps 16, or --timesteps 4,8,16,32 for a sweep")
    return values


def membrane_bits(g) -> int:
    """The widest membrane of the graph's IF layers (0 without any)."""
    return max((int(n.membrane_bits) for n in g.nodes if isinstance(n, IFNode)), default=0)


def warn_saturation(saturations: dict[str, int], timesteps: int, built: int, bits: int) -> None:
    """Warn when membranes saturated: the SNN no longer computes what the ANN does (typical
    of a T far beyond the build's, where charge piles up past the membrane width), so its
    score is not a measure of the conversion."""
    hit = {k: int(v) for k, v in saturations.items() if v}
    if not hit:
        return
    layers = ", ".join(f"'{k}' ({v})" for k, v in sorted(hit.items(), key=lambda kv: -kv[1])[:3])
    log.warning("membranes saturated %d times at T=%d (the build's T is %d; most in %s): the "
                "%d-bit membranes cannot hold the charge, so these results do not reflect the "
                "network; use a T nearer the build's, or convert with more --membrane-bits",
                sum(hit.values()), timesteps, built, layers, bits)


def _target_resources(art) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
    """Per-layer figures (cores, chips) of the backend the artifact was compiled for, and
    its totals; empty for the reference simulator, or when that backend is not installed."""
    built = art.target
    name = built.name
    if name == SIM or name not in available_backends():
        return {}, {}
    try:
        backend = get_backend(name, built.options)
        layers = backend.layer_resources(art.graph)
        return layers, backend.resource_totals(art.graph, layers)
    except SnnCompileError:
        raise
    except Exception as e:  # a plugin's bug must not cost the user the evaluation
        log.warning("backend '%s' could not estimate its resources (%s: %s)", name, type(e).__name__, e)
        return {}, {}


def evaluate_artifact(out: str, data_path: str, timesteps: list[int] | None = None,
                      batch_size: int = 256, progress: bool = False,
                      simulations: dict[int, Any] | None = None) -> dict[str, Any]:
    """ANN (onnxruntime) versus SNN (reference simulator) on a labelled data file, at each
    T of ``timesteps`` (default: the build's T). Per-layer figures are at the build's T
    when it is among them, else at the last; ``sweep`` lists every T's scores.
    ``simulations``: where given, receives each T's simulation result (`report` reuses the
    build's T rather than simulating it again)."""
    art = read_artifact(out)
    g = art.graph
    data = load_npz(data_path, g.input.shape, need_labels=True, out_shape=g[g.outputs[0]].shape)
    ann_pred = np.concatenate([b[g.meta["onnx_output"]] for b in onnx_forward(
        art.load_model(), g.meta["onnx_input"], [g.meta["onnx_output"]], data.x, batch_size)])
    ann_score = data.score(ann_pred)
    macs = ann_macs(g)
    runs = []
    for T in (timesteps or [g.timesteps]):
        res = simulate(g, data.x, timesteps=T, batch_size=batch_size, progress=progress)
        if simulations is not None:
            simulations[T] = res
        snn_score = data.score(res.output)
        warn_saturation(res.saturations, T, g.timesteps, membrane_bits(g))
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
    # The per-layer figures (and the single-run fields) are those of the build's own T when
    # the sweep has it, else of the sweep's last T; "timesteps" says which.
    shown = next((r for r in runs if r["timesteps"] == g.timesteps), runs[-1])
    result = dict(shown)
    result["build_timesteps"] = int(g.timesteps)
    rows = shown["layers"]
    result["max_weight_bits"] = max((r["weight_bits"] for r in rows), default=0)
    result["max_fanin"] = max((r["max_fanin"] for r in rows), default=0)
    result["constraints"] = art.info.get("constraints", {})
    result["target"] = art.target.name
    resources, totals = _target_resources(art)
    if resources:
        for r in rows:
            r.update(resources.get(r["name"], {}))
        result.update(totals)
    if "tuning" in art.info:
        t = art.info["tuning"]
        result["tuning"] = {k: t.get(k) for k in ("method", "epochs", "epochs_budget", "seconds")}
    if len(runs) > 1:
        result["sweep"] = [{k: r[k] for k in r if k != "layers"} for r in runs]
    return result

