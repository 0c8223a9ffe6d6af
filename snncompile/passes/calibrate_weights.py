"""Weights calibrated without labels on the converted network's own spikes, layer by layer.

A converted layer's rate differs from its ANN activation even when its mean is right (what
:mod:`.calibrate_bias` takes back): each sample's count is quantized to T levels, and a
neuron whose input current is not even over the window fires spikes early that later
negative charge cannot take back. On the zoo's MobileNet at T = 4 these errors are about as
large as each other, 20-30 % of a layer's activation from the second spiking layer on, and
they add up layer by layer. Part of them depends on the layer's input in a way a linear map
of that input can take back. So, in the manner of Li et al.'s layer-wise weight calibration
(ICML 2021, arXiv 2106.06984; there by gradient descent through a straight-through spike
function), each weighted node that drives one IF layer from the spikes of another has its
weights and bias refitted, from the first such layer to the last, each on the spikes of the
layers refitted before it: one Gauss-Newton step of the squared error between the layer's
rates and the ANN's activation, with the spike function's gradient taken as one where the
neuron is active (its pre-activation or the ANN's activation above zero) and zero elsewhere.
That step is a least-squares fit of the node's output on its input rates to the target
``P + (A - R)`` (``P`` the node's output on the input rates, ``A`` the ANN's activation
clipped to the layer's scale, ``R`` the layer's rate), on the active rows only, ridge-
regularised towards the current weights. No labels, no gradients through time.

Only nodes whose fan-in is at most :data:`MAX_FANIN` weights per output are refitted (a
least-squares system per output neuron); the zoo's depthwise-separable layers (9 and 16-64)
are, a ResNet's 3x3 convolutions over 64 channels (576) are not. A weight that is zero (one a
``--fanin`` limit pruned) stays zero. :func:`.calibrate_bias.
calibrate_biases` calibrates the refitted network too and keeps it only where its outputs
are closer to the ANN's on the calibration inputs. Float weights change; every integer is
derived again from them by the conversion's own quantization (``--bits`` holds).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..ir import Conv2dNode, DenseNode, Graph, IFNode
from ..sim.ann import ann_forward
from ..sim.padding import pad2d
from .requant import requantize

# Most weights per output neuron a refit solves for, and most rows (sample x position) one
# node's fit reads (more are subsampled with a fixed seed): one (fan-in + 1)^2 system per
# output neuron from at most this many rows.
MAX_FANIN = 64
MAX_ROWS = 16384
# Ridge term, relative to the mean diagonal of the inputs' Gram matrix, pulling the fit
# towards the current weights where the data say little.
RIDGE = 1e-3


def refittable_layers(g: Graph) -> list[str]:
    """The IF layers whose weighted node :func:`calibrate_weights` refits: a convolution or
    dense node of at most :data:`MAX_FANIN` weights per output, read by that layer alone,
    whose input is another IF layer's spikes."""
    out = []
    for n in g.nodes:
        if not isinstance(n, IFNode):
            continue
        w = g[n.inputs[0]]
        if (isinstance(w, (Conv2dNode, DenseNode)) and len(g.consumers(w.name)) == 1
                and isinstance(g[w.inputs[0]], IFNode) and int(np.prod(w.weight.shape[1:])) <= MAX_FANIN):
            out.append(n.name)
    return out


def input_columns(node, x: torch.Tensor) -> torch.Tensor:
    """(N, Cin[, H, W]) inputs of one group as (rows, fan-in), one row per output element, in
    the weight's flattened order: what a least-squares fit of the node's weights reads."""
    if isinstance(node, DenseNode):
        return x.reshape(len(x), -1)
    u = F.unfold(pad2d(x.contiguous(), node.padding), node.weight.shape[2:], dilation=node.dilation,
                 stride=node.stride)
    return u.transpose(1, 2).reshape(-1, u.shape[1])


def output_rows(z: torch.Tensor) -> torch.Tensor:
    """(N, C[, H, W]) as (rows, C), rows in :func:`input_columns`' order."""
    return z.reshape(len(z), z.shape[1], -1).transpose(1, 2).reshape(-1, z.shape[1]) if z.dim() > 2 else z


def _forward(node, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if isinstance(node, DenseNode):
        return F.linear(x.reshape(len(x), -1), w, b)
    return F.conv2d(pad2d(x, node.padding), w, b, stride=node.stride, dilation=node.dilation, groups=node.groups)


def _refit(node, x: torch.Tensor, target: torch.Tensor, active: torch.Tensor,
           gen: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Node ``node``'s float weight and bias refitted to ``target`` on inputs ``x``, per
    output neuron on its ``active`` rows (see the module docstring)."""
    w0 = torch.tensor(np.asarray(node.weight, np.float64))
    b0 = (torch.zeros(w0.shape[0], dtype=torch.float64) if node.bias is None
          else torch.tensor(np.asarray(node.bias, np.float64)))
    groups = node.groups if isinstance(node, Conv2dNode) else 1
    cin, cout = w0.shape[1], w0.shape[0] // groups
    z, keep = output_rows(target), output_rows(active)
    pick = None
    if len(z) > MAX_ROWS:
        pick = torch.as_tensor(np.sort(gen.choice(len(z), MAX_ROWS, replace=False)))
        z, keep = z[pick], keep[pick]
    w, b = w0.clone(), b0.clone()
    for gi in range(groups):
        cols = input_columns(node, x[:, gi * cin:(gi + 1) * cin] if x.dim() > 2 else x)
        cols = cols if pick is None else cols[pick]
        cols = torch.cat([cols, torch.ones(len(cols), 1, dtype=cols.dtype)], 1)
        for o in range(gi * cout, (gi + 1) * cout):
            flat = torch.cat([w0[o].reshape(-1), b0[o:o + 1]])
            # only the weights there are: a zero (pruned by --fanin) stays zero
            idx = torch.nonzero(flat != 0).reshape(-1)
            idx = torch.cat([idx[idx < len(flat) - 1], torch.tensor([len(flat) - 1])])
            a = cols[keep[:, o]][:, idx]
            if len(a) <= a.shape[1]:  # too few active rows to say anything
                continue
            gram = a.T @ a
            ridge = RIDGE * float(gram.diagonal()[:-1].mean() if len(gram) > 1 else 1.0) + 1e-12
            sol = torch.linalg.solve(gram + ridge * torch.eye(len(gram), dtype=gram.dtype),
                                     a.T @ z[keep[:, o], o] + ridge * flat[idx])
            new = torch.zeros_like(flat)
            new[idx] = sol
            w[o] = new[:-1].reshape(w0[o].shape)
            b[o] = new[-1]
    return w.numpy().astype(np.float32), b.numpy().astype(np.float32)


def refit_layer(g: Graph, ann: Graph, x: np.ndarray, runs, batch_size: int = 256,
                gen: np.random.Generator | None = None) -> Graph:
    """``g`` with the weighted node that drives IF layer ``runs.node`` (one of
    :func:`refittable_layers`) refitted on inputs ``x`` (no labels) against the float graph
    ``ann``'s activation (see the module docstring). ``runs`` holds the layer's input spike
    trains recorded from ``g`` (their counts, :meth:`counts`) and runs the layer alone
    (:class:`.calibrate_bias._LayerRuns`); refitting changes nothing before the layer, so
    they stay valid for the result. ``gen`` picks the rows subsampled on large layers."""
    name, T = runs.node, runs.T
    node, wnode = g[name], g[g[name].inputs[0]]
    src = g[wnode.inputs[0]]
    scale = torch.as_tensor(np.broadcast_to(src.out_scale, src.shape).astype(np.float64))
    rin = runs.counts(src.name).to(torch.float64) * scale / T
    rate = torch.as_tensor(runs.values(g), dtype=torch.float64)
    z = torch.cat([ann_forward(ann, x[s:s + batch_size], return_all=True)[wnode.name]
                   for s in range(0, x.shape[0], batch_size)]).to(torch.float64)
    lam = torch.as_tensor(np.broadcast_to(np.asarray(node.lam, np.float64).reshape(-1), (z.shape[1],)).copy())
    lam = lam.reshape((1, -1) + (1,) * (z.dim() - 2))
    w0 = torch.tensor(np.asarray(wnode.weight, np.float64))
    b0 = None if wnode.bias is None else torch.tensor(np.asarray(wnode.bias, np.float64))
    pre = _forward(wnode, rin, w0, b0)
    ann_act = torch.minimum(z.clamp(min=0), lam)
    w, b = _refit(wnode, rin, pre + (ann_act - rate), (pre > 0) | (ann_act > 0),
                  gen if gen is not None else np.random.default_rng(0))
    g = g.copy()
    g[wnode.name].weight, g[wnode.name].bias = w, b
    return requantize(g)
