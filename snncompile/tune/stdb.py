"""Hybrid conversion with spike-timing-dependent backpropagation (STDB; Rathi et al., ICLR 2020).

1. Threshold balancing: with the whole network spiking and constrained, hidden layers in
   order get the threshold that makes their most active neuron over the calibration inputs
   fire at every step (the maximum, not a percentile, of the activation its spiking inputs
   produce), times ``--balance-scale`` (0.7 by default: lower thresholds, more spikes,
   lower latency). This is the authors' balancing (per layer, the largest input over a
   batch, scaled) in the rate terms of our integer neurons.
2. Surrogate-gradient BPTT of the whole network on the task loss, with
   ``d spike / d (v/theta) = alpha * exp(-beta * dt)``, ``dt`` the steps since the neuron's
   last spike (``--surrogate exp``, alpha 0.3, beta 0.01), or the linear surrogate
   ``alpha * max(0, 1 - |v/theta - 1|)`` (``--surrogate linear``): the authors note STDB
   can be unstable.

The forward is the exact integer network (:mod:`.bptt`), so validation scores are what
every backend computes.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data import Dataset
from .bptt import forward, surrogate_if
from .methods import METHODS
from .model import TandemNet
from .options import TrainOptions, fixed_thresholds, surrogate_from
from .objective import loss as task_loss
from .ptl import TuneResult, tune


@torch.no_grad()
def balance_thresholds(net: TandemNet, x: torch.Tensor, scale: float) -> dict[str, np.ndarray]:
    """Set each hidden layer's scale, first to last, to ``scale`` x the maximum of its
    activation with every layer spiking (earlier layers already balanced); returns them."""
    out = {}
    for j, layer in enumerate(net.layers):
        net.recalibrate(layer, x, 100.0)
        lam = getattr(net, f"lam_{j}")
        lam.mul_(scale)
        net._cache = None
        out[layer] = lam.cpu().numpy().copy()
    return out


def train_stdb(net: TandemNet, train: Dataset, val: Dataset, opts: TrainOptions,
               calib_x: np.ndarray | None = None, **kw) -> TuneResult:
    """Balance thresholds, then tune ``net`` (in place) by STDB; ``kw`` goes to :func:`.ptl.tune`."""
    dev = torch.device(opts.device)
    net.to(dev)
    net.set_stage(net.n_stages)
    xc = torch.as_tensor(calib_x if calib_x is not None else train.x[:1024], device=dev)
    balance_thresholds(net, xc, opts.balance_scale if opts.balance_scale is not None else 0.7)
    spiking = surrogate_if(surrogate_from(opts, METHODS["stdb"].surrogate))

    def step_loss(model: TandemNet, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out, _ = forward(model, x, spiking)
        return task_loss(out, y, train.is_classification)

    return tune(net, train, val, fixed_thresholds(opts), plan=[net.n_stages], step_loss=step_loss,
                calib_x=calib_x, **kw)
