"""The numbers behind a report: what `snncompile report` plots, measured on one data file.

Everything comes from the same functions `evaluate` uses (``evaluate_artifact`` for the
accuracy sweep and the per-layer table, the reference simulator for spike counts and
SynOps, onnxruntime for the ANN), so a report's figures are `evaluate --json`'s figures.
Two things are added here:

* per-layer SynOps against ANN MACs: each spike-driven weighted node's synaptic events
  (``SimResult.synops_by_node``) and MACs, summed over the synapse chain that feeds a layer;
* per-layer divergence between ANN and SNN: for each IF layer, the Pearson correlation
  (and the RMS error relative to the ANN's RMS) between the ANN's activation (the ReLU's
  output from onnxruntime) and the value its spike count stands for, ``lam * count / T``;
  for an output, between the ANN's and the SNN's outputs. A layer where the correlation
  drops is where accuracy is lost.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from ...targets.artifact import Artifact, read_artifact
from ...calibrate.statistics import onnx_forward
from ...passes.quantize import unit_scales
from ...data import load_npz
from ...ir import Graph, IFNode, WeightedNode
from ...ir.structure import chain_ops, op_fanin, populations, weight_bits
from ..evaluate import evaluate_artifact

# The accuracy-vs-T sweep when none is given (the artifact's own T is always added).
DEFAULT_SWEEP = (2, 4, 8, 16, 32)


@dataclass
class Agreement:
    """Streaming Pearson correlation and relative RMS error of two equally shaped tensors."""

    n: int = 0
    sx: float = 0.0
    sy: float = 0.0
    sxx: float = 0.0
    syy: float = 0.0
    sxy: float = 0.0
    see: float = 0.0  # sum of squared differences

    def add(self, ann: np.ndarray, snn: np.ndarray) -> None:
        a = np.asarray(ann, np.float64).ravel()
        s = np.asarray(snn, np.float64).ravel()
        self.n += a.size
        self.sx += a.sum()
        self.sy += s.sum()
        self.sxx += a @ a
        self.syy += s @ s
        self.sxy += a @ s
        self.see += float(((a - s) ** 2).sum())

    def correlation(self) -> float | None:
        """Pearson's r; None where either side is constant (no correlation is defined)."""
        if self.n == 0:
            return None
        vx = self.sxx - self.sx ** 2 / self.n
        vy = self.syy - self.sy ** 2 / self.n
        if vx <= 1e-12 * max(self.sxx, 1e-300) or vy <= 1e-12 * max(self.syy, 1e-300):
            return None
        return float((self.sxy - self.sx * self.sy / self.n) / np.sqrt(vx * vy))

    def relative_rmse(self) -> float | None:
        """RMS of (SNN - ANN) over the RMS of the ANN's values (0 is a perfect match)."""
        if self.n == 0 or self.sxx <= 0:
            return None
        return float(np.sqrt(self.see / self.sxx))


@dataclass
class LayerFigures:
    """One layer (IF layer, spiking max pool or output) of the report."""

    name: str
    kind: str
    neurons: int
    max_fanin: int
    weight_bits: int
    firing_rate: float | None          # spikes per neuron per step (None for outputs)
    spikes_per_sample: float
    synops_per_sample: float           # synaptic events into this layer per sample
    macs_per_sample: int               # the ANN's MACs of the same synapse chain
    spike_driven: bool                 # False where the chain reads the analog input
    correlation: float | None = None   # ANN activation vs SNN value (Pearson r)
    relative_rmse: float | None = None
    cores: int | None = None           # what the target spends on it (where it says)
    chips: int | None = None


@dataclass
class WeightFigures:
    """A weighted node's float weights and what its integers stand for."""

    name: str
    layer: str                         # the layer whose synapse chain holds it
    bits: int
    float_weights: np.ndarray          # flattened float (pre-quantization) weights
    quantized_weights: np.ndarray      # integer weights times their scale, same order


@dataclass
class ReportData:
    """Everything a report shows."""

    artifact: str
    data: str
    samples: int
    timesteps: int                     # the artifact's T (per-layer figures are at this T)
    task: str                          # "classification" or "regression"
    target: str
    evaluation: dict[str, Any]         # evaluate_artifact(...) at the artifact's T
    sweep: list[dict[str, Any]]        # one row per T: timesteps, ann_/snn_ scores, synops
    layers: list[LayerFigures]
    weights: list[WeightFigures] = field(default_factory=list)
    fanin_limits: dict[str, int] = field(default_factory=dict)  # source -> limit

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready summary (weights as counts, not values)."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("weights", "layers")}
        d["layers"] = [asdict(l) for l in self.layers]
        d["weights"] = [{"name": w.name, "layer": w.layer, "bits": w.bits,
                         "count": int(w.float_weights.size),
                         "max_abs_error": float(np.abs(w.float_weights - w.quantized_weights).max(initial=0.0))}
                        for w in self.weights]
        return d


def measure_report(out: str, data: str, timesteps: list[int] | None = None,
                   batch_size: int = 256, progress: bool = False) -> ReportData:
    """Measure everything a report of the build in ``out`` on ``data`` shows.

    ``timesteps``: the accuracy sweep (default 2, 4, 8, 16, 32); the artifact's own T is
    always included, and the per-layer figures are taken at it."""
    art = read_artifact(out)
    g = art.graph
    T = int(g.timesteps)
    sweep = sorted(set(timesteps or DEFAULT_SWEEP) | {T})
    # evaluate's top-level fields and per-layer rows are at the artifact's own T
    sims: dict[int, Any] = {}
    ev = evaluate_artifact(out, data, sweep, batch_size, progress=progress, simulations=sims)
    runs = sorted(ev.get("sweep", [ev]), key=lambda r: r["timesteps"])
    ds = load_npz(data, g.input.shape, need_labels=True, out_shape=g[g.outputs[0]].shape)
    sim = sims[T]  # the sweep always holds the build's T: simulated once, used twice
    agree = _divergence(art, ds.x, sim, batch_size)
    rows = {r["name"]: r for r in ev["layers"]}
    layers = []
    for p in populations(g):
        weighted = [o for o in chain_ops(g, p.name) if isinstance(o, WeightedNode)]
        driven = [o.name for o in weighted if o.name in sim.synops_by_node]
        r = rows[p.name]
        a = agree.get(p.name)
        layers.append(LayerFigures(
            name=p.name, kind=p.kind, neurons=p.neurons, max_fanin=p.max_fanin, weight_bits=p.weight_bits,
            firing_rate=r.get("firing_rate"), spikes_per_sample=float(r["spikes_per_sample"]),
            synops_per_sample=float(sum(sim.synops_by_node[k].mean() for k in driven)),
            macs_per_sample=int(sum(int(np.prod(o.shape)) * op_fanin(o, nonzero=False) for o in weighted)),
            spike_driven=bool(driven),
            correlation=a.correlation() if a else None, relative_rmse=a.relative_rmse() if a else None,
            cores=r.get("cores"), chips=r.get("chips")))
    return ReportData(artifact=str(out), data=str(data), samples=int(len(ds.x)), timesteps=T,
                      task="classification" if ds.is_classification else "regression",
                      target=ev.get("target", "sim"), evaluation=ev, sweep=runs, layers=layers,
                      weights=weight_figures(g), fanin_limits=fanin_limits(art))


def _divergence(art: Artifact, x: np.ndarray, sim, batch_size: int) -> dict[str, Agreement]:
    """Per IF layer and output: ANN (onnxruntime) against SNN (the simulation ``sim``)."""
    g = art.graph
    T = sim.timesteps
    tensors = {n.name: n.calib_tensor for n in g.nodes if isinstance(n, IFNode) and n.calib_tensor}
    out_name = g.meta["onnx_output"]
    wanted = sorted(set(tensors.values()) | {out_name})
    first = g.outputs[0]  # the output evaluate scores (the ONNX output compiled)
    agree = {name: Agreement() for name in list(tensors) + [first]}
    start = 0
    for batch in onnx_forward(art.load_model(), g.meta["onnx_input"], wanted, x, batch_size):
        n = len(next(iter(batch.values())))
        sl = slice(start, start + n)
        for name, t in tensors.items():
            node = g[name]
            snn = sim.spike_counts[name][sl] * _if_scale(node) / T
            agree[name].add(np.maximum(batch[t].reshape(snn.shape), 0.0), snn)
        snn = sim.outputs[first][sl]
        agree[first].add(batch[out_name].reshape(snn.shape), snn)
        start += n
    return agree


def _if_scale(node: IFNode) -> np.ndarray:
    """The real value of one spike count over T steps of an IF layer (its ``lam``), per neuron."""
    return np.broadcast_to(np.asarray(node.out_scale, np.float64), node.shape)


def dequantized(graph: Graph, node: WeightedNode) -> np.ndarray:
    """The real weights a node's integers stand for, in the float weights' layout:
    ``weight_int * out_scale / input scale`` (conversion's ``weight_int = round(w * s_in /
    s_out)`` undone; a weight exponent is part of ``out_scale``)."""
    s_in, s_out = unit_scales(graph, node)
    return node.weight_int.astype(np.float64) * s_out / s_in


def weight_figures(graph: Graph) -> list[WeightFigures]:
    """Float and quantized weights of every converted weighted node, with its layer's name."""
    owner: dict[str, str] = {}
    for p in populations(graph):
        for o in chain_ops(graph, p.name):
            owner.setdefault(o.name, p.name)
    out = []
    for n in graph.nodes:
        if isinstance(n, WeightedNode) and n.weight_int is not None:
            out.append(WeightFigures(name=n.name, layer=owner.get(n.name, n.name), bits=weight_bits(n),
                                     float_weights=np.asarray(n.weight, np.float64).ravel(),
                                     quantized_weights=dequantized(graph, n).ravel()))
    return out


def fanin_limits(art: Artifact) -> dict[str, int]:
    """Fan-in limits that apply to the build: the target's (recorded in compile.json at
    compile time) and the one it was compiled under (--fanin)."""
    limits = {}
    built = art.target
    lim = built.limits.get("fan_in")
    if lim:
        limits[f"{built.name} limit"] = int(lim)
    asked = art.constraints["fanin"]
    if asked:
        limits["--fanin"] = int(asked)
    return limits
