"""Calibration without labels: shift each spiking layer's bias by the mean error its spike
rate makes against the ANN, layer by layer, on the calibration inputs alone.

A converted layer's spike rate differs from its ANN activation by an error that does not
average out: quantization of the count, spikes fired early that later negative current
cannot take back, the transient before a membrane settles. Much of it is a shift of the
channel's mean, which the layer's bias can take back. This is the bias correction of Li et
al. (ICML 2021, "A Free Lunch From ANN", arXiv 2106.06984): going from the first layer to
the last, run the SNN (with the layers before already corrected) at the chosen T on the
calibration inputs, compare each channel's mean rate ``lam * count / T`` with the mean of
the ANN's activation clipped to what the layer can represent (``[0, lam]``), and add the
difference to the bias of the weighted node that drives the layer. The outputs' biases get
the same correction against the ANN's outputs. No labels, no gradients: one simulation per
layer.

The pass changes float biases only and re-derives every integer with the conversion's own
quantization (:func:`.requant.requantize`), so the graph stays a plain converted graph
(tuning and requantization keep the correction). The correction is made for one window T;
the thresholds stay independent of T, but the corrected biases fit that T best.
"""

from __future__ import annotations

import numpy as np
import torch

from ..ir import AddNode, Graph, IFNode, WeightedNode
from ..sim.ann import ann_forward
from ..sim.evaluator import needed, run_window, window_batch
from ..sim.simulator import quantize_input
from .requant import requantize


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


def _snn_mean(graph: Graph, xq: np.ndarray, T: int, node: str) -> np.ndarray:
    """Per-channel mean over inputs ``xq`` (integer) of ``node``'s real value: an IF
    layer's rate ``lam * count / T``, an output's ``scale * acc / T``."""
    want = needed(graph, [node])
    step = window_batch(graph, T)
    n = graph[node]
    total = 0.0
    for s in range(0, xq.shape[0], step):
        r = run_window(graph, torch.as_tensor(xq[s:s + step]), T, nodes=want)
        v = (r.counts if isinstance(n, IFNode) else r.acc)[node].cpu().numpy()
        total = total + _channel_sum(v * np.broadcast_to(n.out_scale, n.shape) / T)
    return total / _per_channel(graph, node, xq.shape[0])


def calibrate_biases(snn: Graph, ann: Graph, x: np.ndarray, timesteps: int | None = None,
                     outputs: bool = True, batch_size: int = 256) -> tuple[Graph, dict[str, float]]:
    """The converted graph ``snn`` with each spiking layer's (and, with ``outputs``, each
    output's) bias corrected by the mean error of its rate against the float graph ``ann``
    on calibration inputs ``x`` (no labels), at ``timesteps`` (default the graph's T).

    Returns the new graph and, per corrected layer, the mean absolute error before its
    correction, relative to the layer's mean scale (ANN output magnitude for outputs), for
    the record. Layers whose input is not driven by a weighted node of their own are left
    as they are."""
    T = int(timesteps or snn.timesteps)
    layers = [n.name for n in snn.nodes if isinstance(n, IFNode)]
    layers += [o for o in snn.outputs if outputs and isinstance(snn[o], WeightedNode)]
    layers = [k for k in layers if k in ann and (isinstance(snn[k], WeightedNode) or bias_holder(snn, k))]
    target = _ann_means(snn, ann, x, layers, batch_size)
    xq = quantize_input(snn, x)
    g = snn
    record: dict[str, float] = {}
    for name in layers:
        node = g[name]
        holder = node if isinstance(node, WeightedNode) else bias_holder(g, name)
        err = target[name] - _snn_mean(g, xq, T, name)
        unit = float(np.mean(node.out_scale)) if isinstance(node, IFNode) else float(np.abs(target[name]).mean())
        record[name] = round(float(np.abs(err).mean() / (unit or 1.0)), 6)
        g = g.copy()
        h = g[holder.name]
        base = np.zeros(h.weight.shape[0], np.float32) if h.bias is None else np.asarray(h.bias, np.float32)
        h.bias = (base + err.astype(np.float32)).reshape(base.shape)
        g = requantize(g)
    return g, record
