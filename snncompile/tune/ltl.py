"""Local tandem learning (LTL; Yang et al., NeurIPS 2022), the offline variant.

Teacher-student: the teacher is the converted network's ANN (its float weights before any
tuning, unconstrained). Every spiking layer of the student learns, in parallel with the
others, to match the teacher's activation of the same layer, normalized:

    loss_l = MSE(count_l / T, clamp(A_l / P_l, 0, 1)),   P_l = 99.9th percentile of A_l

(``--percentile``; per channel with ``--norm channel``) over the calibration inputs. A
student layer's input is the previous student layer's spike train, detached, so each
layer's weights learn from its own loss only; within a layer, gradients flow through time
by surrogate-gradient BPTT (:mod:`.bptt`). The output layer learns from the task loss
(cross-entropy; MSE for regression). The student's thresholds start from ``P_l`` so that
its rates and the targets share one scale. Under --fanin the teacher is the ANN with the
fan-in masks, fine-tuned first (PTL's ANN stage 0): see :func:`train_ltl`.

Everything is spiking and constrained (--bits, --fanin) from the first epoch; the forward
is the exact integer network, so the validation score is what every backend computes.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import numpy as np
import torch

from ..data import Dataset
from .bptt import forward, surrogate_if
from .methods import METHODS
from .model import TandemNet
from .options import TrainOptions, fixed_thresholds, surrogate_from
from .objective import loss as task_loss
from .ptl import TuneResult, tune


def ltl_target(activation: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The teacher's normalized activation ``clamp(A / P, 0, 1)``; ``scale`` P broadcasts
    over ``activation`` (a scalar, or one value per channel)."""
    return torch.clamp(activation / scale, 0.0, 1.0)


def teacher_scales(teacher: TandemNet, x: torch.Tensor, percentile: float) -> dict[str, np.ndarray]:
    """Per hidden layer, the ``percentile`` of the teacher's activation over inputs ``x``
    (shaped like the layer's scale: one value, or one per channel)."""
    return {layer: teacher.recalibrate(layer, x, percentile) for layer in teacher.layers}


def train_ltl(net: TandemNet, train: Dataset, val: Dataset, opts: TrainOptions,
              calib_x: np.ndarray | None = None, on_stage_end: Callable[[int], None] | None = None,
              **kw) -> TuneResult:
    """Tune ``net`` (in place) by offline LTL; ``kw`` goes on to :func:`.ptl.tune`.

    Under a fan-in limit the teacher is the ANN with the fan-in masks, fine-tuned first
    (stage 0, as in PTL): the unpruned ANN's activations are targets no pruned student
    layer can reach. Without one, the teacher is the converted ANN as it is."""
    dev = torch.device(opts.device)
    net.to(dev)
    xc = torch.as_tensor(calib_x if calib_x is not None else train.x[:1024], device=dev)
    local: dict[str, Any] = {}

    def set_teacher(teacher: TandemNet) -> None:
        teacher.eval()
        scales = teacher_scales(teacher, xc, opts.percentile)
        with torch.no_grad():
            for j, layer in enumerate(net.layers):
                lam = getattr(net, f"lam_{j}")
                lam.copy_(torch.as_tensor(scales[layer].reshape(lam.shape), dtype=lam.dtype))
        net._cache = None
        local["teacher"] = teacher
        local["P"] = {k: torch.as_tensor(v, dtype=torch.float32, device=dev) for k, v in scales.items()}

    staged = bool(net.budgets) and net.prune_lead > 0
    if not staged:
        set_teacher(TandemNet(net.base, caps=net.caps).to(dev))  # stage 0: the ANN, float and unconstrained

    def stage_end(stage: int) -> None:
        if stage == 0:
            set_teacher(copy.deepcopy(net))
        if on_stage_end is not None:
            on_stage_end(stage)

    spiking = surrogate_if(surrogate_from(opts, METHODS["ltl"].surrogate), detach_output=True)

    def step_loss(model: TandemNet, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if model.stage == 0:  # the teacher's own fine-tuning under the fan-in masks
            return task_loss(model(x), y, train.is_classification)
        out, res = forward(model, x, spiking)
        with torch.no_grad():
            _, acts, _ = local["teacher"]._values(x)
        loss = task_loss(out, y, train.is_classification)
        for layer in model.layers:
            a = acts[layer].to(torch.float32)
            p = local["P"][layer]
            p = p.reshape((-1,) + (1,) * (a.dim() - 2)) if p.numel() > 1 else p
            rate = (res.counts[layer] / model.T).to(torch.float32)
            loss = loss + torch.nn.functional.mse_loss(rate, ltl_target(a, p))
        return loss

    plan = [0, net.n_stages] if staged else [net.n_stages]
    return tune(net, train, val, fixed_thresholds(opts), plan=plan, step_loss=step_loss, calib_x=calib_x,
                on_stage_end=stage_end, **kw)
