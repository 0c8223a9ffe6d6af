"""The peers' ANN-to-SNN conversions, run on the same trained torch model as snncompile.

Both take the float model and calibration inputs, convert with the peer's own API, feed the
analog input as a constant current at every step (the peers' documented usage) and sum the
output layer over the steps; accuracy at each T is read from the running sum, so one
simulation of max(T) steps serves every T. Neither applies any hardware limit.

* SpikingJelly 2.0.0: ``FXConverter(recipe=RateCodingRecipe(dataloader, mode="99.9%"))``
  (robust-norm thresholds from the 99.9th percentile, IF neurons with soft reset).
* sinabs 3.1.3: ``sinabs.utils.normalize_weights`` (99.9th percentile per ReLU layer, as
  in Rueckauer et al.), then ``sinabs.from_model`` with ``IAFSqueeze`` layers, threshold 1
  and ``SingleSpike`` (at most one spike per neuron and step, like an IF neuron in hardware;
  sinabs' default ``MultiSpike`` lets a neuron emit several spikes per step).

Install: ``pip install --no-deps --ignore-requires-python spikingjelly==2.0.0`` (its wheel
declares Python >= 3.11; the ann2snn path imports and runs on 3.10) and the ``bench`` extra
(sinabs, loguru, requests, tqdm); ``make bench`` does both.
"""

from __future__ import annotations

import copy
from importlib.metadata import version as _dist_version
from typing import Callable

import numpy as np
import torch
from torch import nn

PERCENTILE = 99.9
BATCH = 500


def version(name: str) -> str:
    return _dist_version(name)


def _accuracy_by_T(step_outputs: Callable[[torch.Tensor, int], torch.Tensor], x: np.ndarray,
                   y: np.ndarray, Ts: list[int]) -> dict[int, float]:
    """``step_outputs(xb, T)`` returns (T, N, classes) outputs per step for a batch."""
    correct = {T: 0 for T in Ts}
    with torch.no_grad():
        for i in range(0, len(x), BATCH):
            out = torch.cumsum(step_outputs(torch.from_numpy(x[i:i + BATCH]), max(Ts)), dim=0)
            yb = torch.from_numpy(y[i:i + BATCH])
            for T in Ts:
                correct[T] += int((out[T - 1].argmax(1) == yb).sum())
    return {T: correct[T] / len(x) for T in Ts}


def spikingjelly(model: nn.Module, calib_x: np.ndarray, x: np.ndarray, y: np.ndarray,
                 Ts: list[int]) -> dict[int, float]:
    """SpikingJelly's rate-coding ann2snn (see the module docstring)."""
    from spikingjelly.activation_based import functional
    from spikingjelly.activation_based.ann2snn import FXConverter, RateCodingRecipe

    loader = [torch.from_numpy(calib_x[i:i + 128]) for i in range(0, len(calib_x), 128)]
    recipe = RateCodingRecipe(dataloader=loader, mode=f"{PERCENTILE}%")
    snn = FXConverter(recipe=recipe, device="cpu").convert(copy.deepcopy(model)).eval()

    def steps(xb: torch.Tensor, T: int) -> torch.Tensor:
        functional.reset_net(snn)
        return torch.stack([snn(xb) for _ in range(T)])

    return _accuracy_by_T(steps, x, y, Ts)


def _relu_param_pairs(model: nn.Module) -> tuple[list[str], list[str]]:
    """Names of each ReLU and of the conv/linear layer feeding it (a Sequential model)."""
    relus, params, last = [], [], None
    for name, m in model.named_children():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            last = name
        elif isinstance(m, nn.ReLU) and last is not None:
            relus.append(name)
            params.append(last)
    return relus, params


def sinabs(model: nn.Module, calib_x: np.ndarray, x: np.ndarray, y: np.ndarray,
           Ts: list[int]) -> dict[int, float]:
    """sinabs' from_model after its weight normalisation (see the module docstring)."""
    import sinabs as sb
    from sinabs.activation import SingleSpike
    from sinabs.utils import normalize_weights

    ann = copy.deepcopy(model).eval()
    relus, params = _relu_param_pairs(ann)
    normalize_weights(ann, torch.from_numpy(calib_x), relus, params, percentile=PERCENTILE)
    T_max = max(Ts)
    net = sb.from_model(ann, spike_threshold=1.0, spike_fn=SingleSpike, num_timesteps=T_max)
    snn = net.spiking_model.eval()

    def steps(xb: torch.Tensor, T: int) -> torch.Tensor:
        sb.utils.reset_states(snn)
        n = len(xb)
        rep = xb.unsqueeze(1).expand(n, T, *xb.shape[1:]).reshape(n * T, *xb.shape[1:])
        return snn(rep).reshape(n, T, -1).transpose(0, 1)

    return _accuracy_by_T(steps, x, y, Ts)


RUNNERS = {"spikingjelly": spikingjelly, "sinabs": sinabs}
