"""Calibration without labels, on the calibration inputs alone, for one window T: each IF
layer's activation scale fitted to T, then each layer's mean error against the ANN taken
back layer by layer through its initial membrane (or its bias).

A converted layer's spike rate differs from its ANN activation by an error that does not
average out: quantization of the count, spikes fired early that later negative current
cannot take back, the transient before a membrane settles. Two corrections of Li et al.
(ICML 2021, "A Free Lunch From ANN", arXiv 2106.06984) take most of it back:

* **Thresholds fitted to T.** A count of at most T spikes represents an activation in
  ``[0, lam]`` in steps of ``lam / T``. The calibrated percentile (99.9th by default) keeps
  rare large activations but leaves most of the others a count of 0 or 1 at small T. Each
  channel's ``lam`` becomes the one, among fractions of the calibrated one, whose T-level
  quantizer (clip and round, or clip and floor with a zero initial membrane) has the least
  mean squared error on the ANN's activations: the clipping error it adds is smaller than
  the quantization error it removes.
* **Mean error, layer by layer.** From the first IF layer to the last, and then the
  outputs, the SNN (with the layers before already corrected) runs at T on the calibration
  inputs; each channel's mean rate ``lam * count / T`` is compared with the mean of the
  ANN's activation clipped to ``[0, lam]``. The difference can be taken back in two ways:
  in the layer's initial membrane (the paper's potential calibration: ``T * error / lam``
  thresholds of charge at t = 0, which also holds back, or brings forward, the layer's
  first spikes, the early spikes much of the error comes from), or in the bias of the
  weighted node that drives the layer (its bias calibration: the same charge spread over
  the window). Both fix the mean; which leaves the rates closer to the ANN's differs by
  network and T (on the zoo the membrane wins on the MobileNet at T = 8, the bias on the
  stride-2 CNN at T = 4), so each layer takes the one whose rates have the smaller squared
  error against the ANN's activations on the calibration inputs. Where the initial
  membrane must stay zero (``--v-init zero``, as NIR needs) it is the bias; where no
  weighted node drives the layer alone (a residual add's ReLU), the membrane. The outputs'
  biases get the same correction against the ANN's outputs.
* **Scales searched on the SNN's own input.** The threshold fit above judges a scale by
  quantizing the ANN's activation; the layer is driven instead by the spikes of the
  converted layers before it, whose errors add up layer by layer. So the calibration is
  also made a second way, each IF layer in turn choosing, per channel, its scale among
  factors of the fitted one together with its mean correction (membrane or bias), by the
  squared error of its rates, driven by the already-calibrated layers before it, against
  the ANN's activation (the layer-wise threshold search of Deng & Gu, ICLR 2021, arXiv
  2103.00476, on the converted network's input). The layer alone runs for each candidate,
  on the spike trains recorded once from the layers before it. A layer's least error is
  not always the network's best (on the zoo MobileNet at T = 4 it is not), so of the two
  calibrations the one whose outputs are closer to the ANN's on the calibration inputs
  is kept: still no labels.

* **Weights refitted on the SNN's own spikes.** Where layers are driven by small-fan-in
  weighted nodes from other layers' spikes (depthwise-separable networks), the two
  calibrations are also made on the network whose weights
  :mod:`.calibrate_weights` refitted layer by layer (Li et al.'s weight calibration, by
  least squares), and the one of the four whose outputs are closest is kept.

No labels, no gradients: a few simulations per layer. Thresholds and biases are float
parameters from which every integer is re-derived by the conversion's own quantization
(:func:`.requant.requantize`); the initial membrane's correction is kept as its offset from
the default, in thresholds, so requantization keeps it too. The corrections are made for
one window T: the same integers still run at any window, but fit that T best.

Why one module: the corrections share the runs of one layer alone on its recorded input
(:class:`_LayerRuns`), the order in which layers are calibrated, and the choice among the
calibrations by the outputs' error; the per-layer weight fit itself lives in
:mod:`.calibrate_weights`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..ir import AddNode, Graph, IFNode, WeightedNode
from ..ir.structure import ann_macs, is_population
from ..sim.ann import ann_forward
from ..sim.evaluator import SpikeTrains, needed, run_window, trains_as_codes, window_batch
from ..sim.simulator import quantize_input
from .calibrate_weights import refit_layer, refittable_layers
from .requant import requantize

# Reference-simulator work (multiply-accumulates x time steps) the calibration spends by
# default, and the fewest samples worth calibrating on: the zoo's networks (up to 4 M MACs,
# 7 spiking layers) keep 512 samples up to T = 32; an ImageNet ResNet-50 (4 G MACs, 49
# layers) would need about 5e12 for one sample at T = 16, so it is skipped unless asked for.
CALIBRATION_WORK = 10 ** 12
MIN_CALIBRATION_SAMPLES = 32

# Factors of a layer's fitted scale the search on the SNN's own input tries.
SEARCH_FACTORS = (0.7, 0.8, 0.9, 1.0, 1.12, 1.25, 1.4)


def calibration_cost(ann: Graph, timesteps: int) -> int:
    """Work of :func:`calibrate_biases` per sample, made twice (without and with the scale
    search): each spiking layer simulates the network up to it once (half of it on
    average) to record its input spike trains, then itself alone up to three times (measure,
    then compare the two corrections), with the search once to measure and three times per
    scale of :data:`SEARCH_FACTORS` (as it is, then with each correction); then the whole
    network once for each of the two. Each step of all layers alone costs a full ANN
    forward's multiply-accumulates."""
    layers = sum(1 for n in ann.nodes if is_population(n)) + len(ann.outputs)
    plain, search = 3, 3 * len(SEARCH_FACTORS) + 1
    return max(1, int(ann_macs(ann) * int(timesteps) * (layers + plain + search + 2)))


def calibration_samples(ann: Graph, timesteps: int, available: int, asked: bool = False) -> int:
    """How many of ``available`` inputs the calibration at ``timesteps`` uses: as many as
    :data:`CALIBRATION_WORK` pays for; 0 (skip) when that is under
    :data:`MIN_CALIBRATION_SAMPLES`, unless the user ``asked`` for the calibration, who
    then gets that minimum whatever it costs."""
    n = min(available, CALIBRATION_WORK // calibration_cost(ann, timesteps))
    if n >= min(MIN_CALIBRATION_SAMPLES, available):
        return int(n)
    return min(MIN_CALIBRATION_SAMPLES, available) if asked else 0


# Fractions of the calibrated scale the threshold fit tries (never above it: the percentile
# already bounds what calibration saw).
LAM_FRACTIONS = np.linspace(0.2, 1.0, 41)


def bias_holder(graph: Graph, name: str) -> WeightedNode | None:
    """The weighted node whose bias drives node ``name``'s input alone (for a residual add,
    its first weighted input: all share the add's scale), or None where there is none."""
    src = graph[graph[name].inputs[0]]
    if isinstance(src, AddNode):
        src = next((graph[i] for i in src.inputs if isinstance(graph[i], WeightedNode)), None)
    if not isinstance(src, WeightedNode) or len(graph.consumers(src.name)) != 1:
        return None
    return src


def _channel_sum(a: np.ndarray) -> np.ndarray:
    """Sum over samples and positions, one value per channel (per feature for vectors)."""
    return a.sum(axis=(0,) + tuple(range(2, a.ndim))) if a.ndim > 2 else a.sum(axis=0)


def _per_channel(graph: Graph, name: str, samples: int) -> int:
    """How many values :func:`_channel_sum` adds up per channel over ``samples`` inputs."""
    shape = graph[name].shape
    return samples * (int(np.prod(shape[1:])) if len(shape) > 1 else 1)


def _ann_means(snn: Graph, ann: Graph, x: np.ndarray, names: list[str], batch: int) -> dict[str, np.ndarray]:
    """Per-channel means over ``x`` of the ANN's value at each of ``names``: an IF layer's
    activation clipped to what it can represent (``[0, lam]``), an output's value."""
    sums: dict[str, np.ndarray] = {}
    for s in range(0, x.shape[0], batch):
        values = ann_forward(ann, x[s:s + batch], return_all=True)
        for name in names:
            a = values[name].numpy().astype(np.float64)
            node = snn[name]
            if isinstance(node, IFNode):
                a = np.clip(a, 0.0, np.broadcast_to(np.asarray(node.out_scale, np.float64), node.shape))
            sums[name] = sums.get(name, 0.0) + _channel_sum(a)
    return {k: v / _per_channel(snn, k, x.shape[0]) for k, v in sums.items()}


def _frontier(graph: Graph, node: str) -> tuple[set[str], set[str]]:
    """The IF layers whose spike trains feed ``node`` through non-spiking nodes (its
    frontier), and the nodes from there to ``node`` (the input's path included where the
    input feeds it directly): what a run of ``node`` alone needs, given those trains."""
    front: set[str] = set()
    local: set[str] = set()
    stack = [node]
    while stack:
        k = stack.pop()
        if k in local:
            continue
        local.add(k)
        for i in graph[k].inputs:
            if isinstance(graph[i], IFNode):
                front.add(i)
            else:
                stack.append(i)
    return front, local | front


class _LayerRuns:
    """Runs of one layer on the calibration inputs, its input spike trains recorded once
    from the network before it (as it stands when this is made): each candidate of the
    layer's own parameters then costs a run of that layer alone, not of the network up to
    it. The trains are kept as the simulator's spike codes (:func:`trains_as_codes`),
    which its int8 convolutions read as they are."""

    def __init__(self, graph: Graph, xq: np.ndarray, T: int, node: str):
        self.T, self.node, self.xq = T, node, xq
        self.front, self.local = _frontier(graph, node)
        self.step = window_batch(graph, T)
        self.trains: list[dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = []  # per batch
        if self.front:
            want = needed(graph, sorted(self.front))
            for s in range(0, xq.shape[0], self.step):
                r = run_window(graph, torch.as_tensor(xq[s:s + self.step]), T, nodes=want, keep_spikes=self.front,
                               keep_codes=True)
                self.trains.append({k: trains_as_codes(r.spikes[k], graph[k].spikes == "signed")
                                    for k in self.front})

    def counts(self, name: str) -> torch.Tensor:
        """The recorded spike counts of frontier layer ``name`` over the window, (N, *shape)."""
        return torch.cat([t[name][1] for t in self.trains])

    def values(self, graph: Graph) -> np.ndarray:
        """The layer's real value per input, (N, *shape), in ``graph`` (which differs from
        the recorded one only at this layer): an IF layer's rate ``lam * count / T``, an
        output's ``scale * acc / T``."""
        n = graph[self.node]
        parts = []
        for b, s in enumerate(range(0, self.xq.shape[0], self.step)):
            given = {k: SpikeTrains(None, counts.to(torch.float32), active, codes=codes)
                     for k, (codes, counts, active) in (self.trains[b] if self.trains else {}).items()}
            r = run_window(graph, torch.as_tensor(self.xq[s:s + self.step]), self.T, nodes=self.local, given=given)
            v = (r.counts if isinstance(n, IFNode) else r.acc)[self.node].cpu().numpy()
            parts.append(v * np.broadcast_to(n.out_scale, n.shape) / self.T)
        return np.concatenate(parts)


def _ann_values(ann: Graph, node: IFNode, x: np.ndarray, batch: int) -> np.ndarray:
    """The ANN's activation at IF layer ``node`` per input of ``x``, clipped to ``[0, lam]``."""
    lam = np.broadcast_to(np.asarray(node.out_scale, np.float32), node.shape)
    return np.concatenate([np.clip(ann_forward(ann, x[s:s + batch], return_all=True)[node.name].numpy(), 0.0, lam)
                           for s in range(0, x.shape[0], batch)])


def _by_channel(a: np.ndarray) -> np.ndarray:
    """(samples, C, ...) -> (C, samples * positions); (samples, F) -> (F, samples)."""
    return np.moveaxis(a, 1, 0).reshape(a.shape[1], -1) if a.ndim > 2 else a.T


def fit_thresholds(snn: Graph, ann: Graph, x: np.ndarray, timesteps: int | None = None,
                   batch_size: int = 256) -> Graph:
    """The converted graph ``snn`` with each IF layer's ``lam`` (and so its threshold) the
    fraction of its calibrated one (:data:`LAM_FRACTIONS`) whose T-level quantizer has the
    least squared error on the float graph ``ann``'s activations over ``x``: per channel
    where the layer has a scale per channel, else one for the layer."""
    T = int(timesteps or snn.timesteps)
    layers = [n.name for n in snn.nodes if isinstance(n, IFNode) and n.name in ann]
    acts: dict[str, list[np.ndarray]] = {k: [] for k in layers}
    for s in range(0, x.shape[0], batch_size):
        values = ann_forward(ann, x[s:s + batch_size], return_all=True)
        for k in layers:
            acts[k].append(values[k].numpy())
    offset = 0.5 if snn.conversion is None or snn.conversion.v_init == "half" else 0.0
    g = snn.copy()
    for k in layers:
        n = g[k]
        lam0 = np.asarray(n.lam, np.float64)
        a = np.maximum(_by_channel(np.concatenate(acts.pop(k)).astype(np.float64)), 0.0)
        if lam0.size == 1:
            a = a.reshape(1, -1)
        n.lam = fitted_scale(a, np.broadcast_to(lam0.reshape(-1), (a.shape[0],)), T, offset).reshape(lam0.shape)
    return requantize(g)


def fitted_scale(a: np.ndarray, base: np.ndarray, T: int, offset: float) -> np.ndarray:
    """Per row of activations ``a`` (channel x samples, non-negative), the fraction of its
    scale ``base`` (:data:`LAM_FRACTIONS`) whose T-level quantizer (``offset`` 0.5: rounding,
    a half-threshold initial membrane; 0: floor) has the least squared error on the row.
    One row for several scales (a dense layer's features pooled): one fraction for all."""
    if len(a) != len(base):
        top = float(np.max(base))
        return np.asarray(base, np.float64) * fitted_scale(a.reshape(1, -1), np.array([top]), T, offset)[0] / top
    best, chosen = np.full(a.shape[0], np.inf), np.array(base, np.float64)
    for f in LAM_FRACTIONS:
        lam = (base * f)[:, None]
        err = ((lam * np.clip(np.floor(T * a / lam + offset), 0, T) / T - a) ** 2).mean(axis=1)
        better = err < best
        best[better], chosen[better] = err[better], base[better] * f
    return chosen


def _add_bias(g: Graph, holder: str, err: np.ndarray) -> None:
    h = g[holder]
    base = np.zeros(h.weight.shape[0], np.float32) if h.bias is None else np.asarray(h.bias, np.float32)
    h.bias = (base + err.astype(np.float32)).reshape(base.shape)


def _add_potential(n: IFNode, err: np.ndarray, T: int) -> None:
    """Add ``T * err / lam`` thresholds of charge (``err`` per channel, real units) to the
    initial membrane of IF layer ``n``, within its membrane width."""
    th = np.asarray(n.threshold, np.float64)
    lam = np.asarray(n.lam, np.float64).reshape(-1)
    shape_c = (-1,) + (1,) * (th.ndim - 1)
    dv = (err * T / np.broadcast_to(lam, err.shape)).reshape(shape_c) * th.reshape(shape_c)
    base = np.zeros_like(th) if n.v_init is None else np.asarray(n.v_init, np.float64)
    top = 2 ** (n.membrane_bits - 1) - 1
    v = np.clip(np.rint(base.reshape(shape_c) + dv), -top, top).astype(np.int64)
    n.v_init = v.reshape(th.shape) if v.size == th.size else v




def _search_scale(g: Graph, ann: Graph, x: np.ndarray, runs: _LayerRuns, batch: int,
                  potential: bool) -> Graph:
    """``g`` with IF layer ``runs.node``'s scale and mean correction chosen together on the
    layer's own input from the converted layers before it: per channel (where the layer has
    a scale per channel, else for the layer) the factor of :data:`SEARCH_FACTORS` and the
    correction (its mean error taken back in the initial membrane, with ``potential``, or
    in the bias, where a weighted node drives the layer alone) whose rates have the least
    squared error against the ANN's activation."""
    name, T = runs.node, runs.T
    lam0 = np.asarray(g[name].lam, np.float64)
    a = np.concatenate([np.maximum(ann_forward(ann, x[s:s + batch], return_all=True)[name].numpy(), 0.0)
                        for s in range(0, x.shape[0], batch)]).astype(np.float64)
    a = _by_channel(a)
    base = np.broadcast_to(lam0.reshape(-1), (a.shape[0],)).copy()
    order = [n.name for n in g.nodes]
    before = set(order[:order.index(name)])  # unchanged: requantized only from the layer on,
    before -= {k for k in before if any(isinstance(c, AddNode) and c.name not in before  # but an add's
                                        for c in g.consumers(k))}  # inputs go with it
    before = frozenset(before)
    holder = bias_holder(g, name)
    best, chosen = np.full(a.shape[0], np.inf), base.copy()
    shift = {"potential": np.zeros(a.shape[0]), "bias": np.zeros(a.shape[0])}
    for f in SEARCH_FACTORS:
        lam = base * f
        c = g.copy()
        c[name].lam = (base[:1] * f if lam0.size == 1 else lam).reshape(lam0.shape)
        c = requantize(c, reuse=before)
        d = _by_channel(runs.values(c)).reshape(a.shape) - a
        # the mean error against what the scale can represent
        err = -(d + a - np.minimum(a, lam[:, None])).mean(axis=1)
        kinds = []
        if potential:
            p = c.copy()
            _add_potential(p[name], err, T)
            kinds.append(("potential", p))
        if holder is not None:
            kinds.append(("bias", _with_bias(c, holder.name, err, before)))
        for kind, cand in kinds or [("", c)]:
            score = ((_by_channel(runs.values(cand)).reshape(a.shape) - a) ** 2).mean(axis=1)
            if lam0.size == 1:  # one scale, so one choice, for the whole layer
                score = np.full_like(score, score.mean())
            better = score < best
            best[better], chosen[better] = score[better], lam[better]
            for k in shift:
                shift[k][better] = err[better] if k == kind else 0.0
    g = g.copy()
    g[name].lam = (chosen[:1] if lam0.size == 1 else chosen).reshape(lam0.shape)
    if holder is not None and np.any(shift["bias"]):
        g = _with_bias(g, holder.name, shift["bias"], before)
    else:
        g = requantize(g)
    if potential:
        _add_potential(g[name], shift["potential"], T)
    return g


def _with_bias(g: Graph, holder: str, err: np.ndarray, reuse: frozenset[str] = frozenset()) -> Graph:
    """``g`` with ``err`` (per channel, real units) added to the bias of weighted node
    ``holder``, its integers derived again."""
    c = g.copy()
    _add_bias(c, holder, err)
    return requantize(c, reuse=reuse)


@dataclass(frozen=True)
class CalibrationRecord:
    """What :func:`calibrate_biases` did, for compile.json: per corrected layer its mean
    absolute error before the correction (relative to the layer's scale); which of the
    calibrations was kept (``fitted``: thresholds fitted to T, then the mean corrections;
    ``searched``: scales searched on the SNN's own input; ``refitted`` and
    ``refitted+searched``: the same on the network whose weights were refitted; ``means``:
    the mean corrections alone, without ``thresholds``); and each candidate's squared error
    of the outputs against the ANN's on the calibration inputs, by which it was chosen
    (empty where there was one candidate)."""

    layers: dict[str, float]
    kept: str
    output_errors: dict[str, float] = field(default_factory=dict)


def calibrate_biases(snn: Graph, ann: Graph, x: np.ndarray, timesteps: int | None = None,
                     outputs: bool = True, batch_size: int = 256, thresholds: bool = True,
                     potential: bool | None = None, search: bool = True,
                     weights: bool = True) -> tuple[Graph, CalibrationRecord]:
    """The converted graph ``snn`` calibrated against the float graph ``ann`` on inputs
    ``x`` (no labels) at ``timesteps`` (default the graph's T): with ``thresholds``, each
    IF layer's scale fitted to T (:func:`fit_thresholds`); then each spiking layer's (and,
    with ``outputs``, each output's) mean error taken back: with ``potential`` (default:
    unless the graph was converted with ``v_init`` "zero") in the initial membrane or the
    bias, whichever leaves the layer's rates closer to the ANN's, else in the bias. With
    ``search`` (and ``thresholds``), the same calibration is also made with each IF layer's scale searched on
    the converted network's own input (:func:`_search_scale`), and the one of the two whose
    outputs are closer to the ANN's on ``x`` (squared error; ties: the plain one) is kept.
    With ``weights`` (and ``search`` and ``thresholds``), both are also made on the network
    whose weights were refitted on its own spikes (:func:`_refit_weights`), where it has a
    layer to refit and :data:`CALIBRATION_WORK` pays for twice the work on ``x``, and of the
    four the one with the closest outputs is kept.

    Returns the new graph and its :class:`CalibrationRecord`: per corrected layer the mean
    absolute error before its correction, relative to the layer's mean scale (ANN output
    magnitude for outputs), and which calibration was kept. Without ``potential``, layers whose input is not driven by a weighted node
    of their own are left as they are."""
    T = int(timesteps or snn.timesteps)
    if potential is None:
        potential = snn.conversion is None or snn.conversion.v_init != "zero"
    g = fit_thresholds(snn, ann, x, T, batch_size) if thresholds else snn
    plain, layers = _calibrate(g, ann, x, T, outputs, batch_size, potential, False)
    if not (search and thresholds):  # scales stay as they are without ``thresholds``
        return plain, CalibrationRecord(layers, "fitted" if thresholds else "means")
    candidates = {"fitted": (plain, layers),
                  "searched": _calibrate(g, ann, x, T, outputs, batch_size, potential, True)}
    if weights and refittable_layers(g) and x.shape[0] * 2 * calibration_cost(ann, T) <= CALIBRATION_WORK:
        refitted = _refit_weights(g, ann, x, T, batch_size)
        for s, label in ((False, "refitted"), (True, "refitted+searched")):
            candidates[label] = _calibrate(refitted, ann, x, T, outputs, batch_size, potential, s)
    ref = [np.concatenate([ann_forward(ann, x[s:s + batch_size], return_all=True)[o].numpy()
                           for s in range(0, x.shape[0], batch_size)]).reshape(x.shape[0], -1) for o in g.outputs]
    xq = quantize_input(g, x)

    def error(c: Graph) -> float:
        step = window_batch(c, T)
        out = [np.concatenate([run_window(c, torch.as_tensor(xq[s:s + step]), T).acc[o].cpu().numpy()
                               for s in range(0, xq.shape[0], step)]).reshape(x.shape[0], -1)
               * np.broadcast_to(c[o].out_scale, c[o].shape).reshape(1, -1) / T for o in c.outputs]
        return float(np.mean([((a - r) ** 2).mean() for a, r in zip(out, ref)]))

    errors = {label: error(c[0]) for label, c in candidates.items()}
    kept = min(errors, key=errors.__getitem__)  # the first of equals: plain before searched
    graph, layers = candidates[kept]
    return graph, CalibrationRecord(layers, kept, {k: float(f"{v:.6g}") for k, v in errors.items()})


def _refit_weights(g: Graph, ann: Graph, x: np.ndarray, T: int, batch_size: int) -> Graph:
    """``g`` with the weights of each of :func:`.calibrate_weights.refittable_layers`
    refitted on its own input spikes (:func:`.calibrate_weights.refit_layer`), from the
    first to the last, each on the spikes of the layers refitted before it."""
    xq = quantize_input(g, x)
    gen = np.random.default_rng(0)
    for name in refittable_layers(g):
        g = refit_layer(g, ann, x, _LayerRuns(g, xq, T, name), batch_size, gen)
    return g


def _calibrate(g: Graph, ann: Graph, x: np.ndarray, T: int, outputs: bool, batch_size: int,
               potential: bool, search: bool) -> tuple[Graph, dict[str, float]]:
    """:func:`calibrate_biases` after the threshold fit, with or without the search."""
    layers = [n.name for n in g.nodes if isinstance(n, IFNode)]
    layers += [o for o in g.outputs if outputs and isinstance(g[o], WeightedNode)]
    layers = [k for k in layers if k in ann and (isinstance(g[k], WeightedNode) or potential or bias_holder(g, k))]
    target = _ann_means(g, ann, x, layers, batch_size)
    xq = quantize_input(g, x)
    record: dict[str, float] = {}
    for name in layers:
        runs = _LayerRuns(g, xq, T, name)
        node = g[name]
        rate = runs.values(g)
        err = target[name] - _channel_sum(rate) / _per_channel(g, name, x.shape[0])
        unit = float(np.mean(node.out_scale)) if isinstance(node, IFNode) else float(np.abs(target[name]).mean())
        record[name] = round(float(np.abs(err).mean() / (unit or 1.0)), 6)
        if search and isinstance(node, IFNode):
            g = _search_scale(g, ann, x, runs, batch_size, potential)
            continue
        holder = node if isinstance(node, WeightedNode) else bias_holder(g, name)
        by_bias = None
        if holder is not None:
            by_bias = g.copy()
            _add_bias(by_bias, holder.name, err)
            by_bias = requantize(by_bias)
        if isinstance(node, IFNode) and potential:
            by_potential = g.copy()
            _add_potential(by_potential[name], err, T)
            if by_bias is not None:  # the one whose rates are closer to the ANN's
                ref = _ann_values(ann, g[name], x, batch_size)
                g = min((by_potential, by_bias), key=lambda c: float(((runs.values(c) - ref) ** 2).mean()))
            else:
                g = by_potential
        else:
            g = by_bias
    return g, record
