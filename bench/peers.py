"""The peers' ANN-to-SNN conversions, run on the same trained torch model as snncompile.

Both take the float model and calibration inputs, convert with the peer's own API, feed the
analog input as a constant current at every step (the peers' documented usage) and sum the
output layer over the steps; accuracy at each T is read from the running sum, so one
simulation of max(T) steps serves every T. Neither applies any hardware limit.

* SpikingJelly 2.0.0: ``FXConverter(recipe=RateCodingRecipe(dataloader, mode="99.9%"))``
  (robust-norm thresholds from the 99.9th percentile, IF neurons with soft reset).
* sinabs 3.1.3: data-based weight normalization (Rueckauer et al. 2017) on the model with
  its BatchNorm folded into the convolutions: each ReLU's scale is the 99.9th percentile of
  its output on the calibration data, and the layer feeding it is multiplied by the previous
  ReLU's scale over its own (its bias divided by its own), so the normalized float network
  computes the ANN's function up to one positive factor per layer; then ``sinabs.from_model``
  with ``IAFSqueeze`` layers, threshold 1 and ``SingleSpike`` (at most one spike per neuron
  and step, like an IF neuron in hardware; sinabs' default ``MultiSpike`` lets a neuron emit
  several spikes per step). sinabs' own ``normalize_weights`` divides each layer (weights and
  bias) by its percentile measured after the upstream layers were already rescaled, which
  leaves every bias off by the product of the scales upstream: the normalized float network
  is then no longer the ANN (on the zoo's stride-2 CNN its accuracy fell to 0.18), so it is
  not used. Only chains of layers (no residual add, no concat) are normalized this way.

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
                 Ts: list[int], **recipe_options) -> dict[int, float]:
    """SpikingJelly's rate-coding ann2snn (see the module docstring); ``recipe_options`` go to
    its ``RateCodingRecipe`` (e.g. ``half_threshold=True, channel_wise=True``)."""
    from spikingjelly.activation_based import functional
    from spikingjelly.activation_based.ann2snn import FXConverter, RateCodingRecipe

    loader = [torch.from_numpy(calib_x[i:i + 128]) for i in range(0, len(calib_x), 128)]
    recipe = RateCodingRecipe(dataloader=loader, mode=f"{PERCENTILE}%", **recipe_options)
    snn = FXConverter(recipe=recipe, device="cpu").convert(copy.deepcopy(model)).eval()

    def steps(xb: torch.Tensor, T: int) -> torch.Tensor:
        functional.reset_net(snn)
        return torch.stack([snn(xb) for _ in range(T)])

    return _accuracy_by_T(steps, x, y, Ts)


def chain_layers(model: nn.Module, x_probe: np.ndarray) -> nn.Sequential:
    """The model as one flat Sequential of its leaf modules in order, each BatchNorm folded
    into the convolution or linear layer before it, Dropout and Identity dropped; ReLU6
    stays. Valid only for models whose leaves run in registration order one after the other
    (chains): checked on ``x_probe``, and a model with a residual add or a concat is refused
    (ValueError)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

    leaves = [m for m in copy.deepcopy(model).eval().modules() if not list(m.children())]
    out: list[nn.Module] = []
    for m in leaves:
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            prev = out[-1] if out else None
            if isinstance(prev, nn.Conv2d):
                out[-1] = fuse_conv_bn_eval(prev, m)
            elif isinstance(prev, nn.Linear):
                out[-1] = fuse_linear_bn_eval(prev, m)
            else:
                raise ValueError("a BatchNorm not right after a conv or linear layer")
        elif not isinstance(m, (nn.Dropout, nn.Identity)):
            out.append(m)
    seq = nn.Sequential(*out).eval()
    with torch.no_grad():
        xb = torch.from_numpy(x_probe)
        try:
            same = torch.allclose(seq(xb), model.eval()(xb), rtol=1e-3, atol=1e-4)
        except RuntimeError:  # the leaves in order do not even chain up (shapes)
            same = False
    if not same:
        raise ValueError("the model is not a chain of layers (a residual add or a concat?): "
                         "its leaf modules in order compute another function")
    return seq


def relu6_as_relu(model: nn.Module) -> nn.Module:
    """A copy with every ReLU6 replaced by a ReLU: both peers convert nn.ReLU modules only
    (an IF neuron's rate saturates at its threshold anyway); the caller reports the float
    accuracy of the copy, which is the ANN the peer converts."""
    model = copy.deepcopy(model)
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.ReLU6):
                setattr(parent, name, nn.ReLU())
    return model


def normalize_chain(seq: nn.Sequential, calib_x: np.ndarray, percentile: float = PERCENTILE) -> nn.Sequential:
    """Data-based normalization of a chain (see the module docstring): every ReLU's output
    scale becomes about 1, and the network's logits are the ANN's times a positive factor."""
    seq = copy.deepcopy(seq).eval()
    acts: dict[int, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, i=i: acts.__setitem__(i, out.detach()))
             for i, m in enumerate(seq) if isinstance(m, nn.ReLU)]
    with torch.no_grad():
        seq(torch.from_numpy(calib_x))
    for h in hooks:
        h.remove()
    prev, pending = 1.0, None
    with torch.no_grad():
        for i, m in enumerate(seq):
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                pending = m
            elif i in acts:
                lam = float(np.percentile(acts[i].numpy(), percentile)) or 1.0
                pending.weight.mul_(prev / lam)
                if pending.bias is not None:
                    pending.bias.div_(lam)
                prev, pending = lam, None
        if pending is not None:  # the output layer: logits times 1/1, inputs at scale prev
            pending.weight.mul_(prev)
    return seq


def sinabs(model: nn.Module, calib_x: np.ndarray, x: np.ndarray, y: np.ndarray,
           Ts: list[int]) -> dict[int, float]:
    """sinabs' from_model after data-based normalization (see the module docstring)."""
    import sinabs as sb
    from sinabs.activation import SingleSpike

    ann = normalize_chain(chain_layers(model, calib_x[:64]), calib_x)
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
