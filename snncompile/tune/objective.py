"""What tuning optimizes and how it scores a network: the task loss, the distillation
loss, and the validation score every method's scheduler watches."""

from __future__ import annotations

import numpy as np
import torch

from ..data import Dataset
from ..sim.evaluator import window_batch
from .model import TandemNet
from .prefix import PrefixCache


def evaluate(net: TandemNet, data: Dataset, batch_size: int | None = None,
             prefix: PrefixCache | None = None) -> dict[str, float]:
    """Validation loss (and accuracy) of the network at its current stage (``prefix``: the
    fixed layers' spike trains for ``data``, see :mod:`.prefix`), ``batch_size`` samples at
    a time (default: :func:`..sim.evaluator.window_batch`)."""
    dev = next(net.parameters()).device
    batch_size = batch_size or window_batch(net.base, net.T)
    total, correct, n = 0.0, 0, len(data.x)
    with torch.no_grad():
        for i in range(0, n, batch_size):
            x = torch.as_tensor(data.x[i:i + batch_size], device=dev)
            y = torch.as_tensor(data.y[i:i + batch_size], device=dev)
            given = prefix.given(np.arange(i, i + len(x)), dev) if prefix is not None else None
            out = net(x, given=given)
            total += float(loss(out, y, data.is_classification)) * len(x)
            if data.is_classification:
                correct += int((out.argmax(1) == y).sum())
    res = {"loss": total / n}
    if data.is_classification:
        res["accuracy"] = correct / n
    return res


def loss(out: torch.Tensor, y: torch.Tensor, classification: bool) -> torch.Tensor:
    """The task loss: cross-entropy on labels, mean squared error on regression targets."""
    if classification:
        return torch.nn.functional.cross_entropy(out, y.long())
    return torch.nn.functional.mse_loss(out.reshape(y.shape), y.to(out.dtype))


def distill_loss(out: torch.Tensor, y: torch.Tensor, teacher: torch.Tensor, classification: bool,
                  share: float, temperature: float) -> torch.Tensor:
    """The task loss mixed with ``share`` of a match to the teacher's outputs: KL between
    the softened distributions (times temperature squared, so its gradient keeps the task
    loss's scale) or, for regression, MSE to the teacher's output."""
    task = loss(out, y, classification)
    if classification:
        t = temperature
        match = torch.nn.functional.kl_div(torch.log_softmax(out / t, 1), torch.log_softmax(teacher / t, 1),
                                           reduction="batchmean", log_target=True) * t * t
    else:
        match = torch.nn.functional.mse_loss(out, teacher)
    return (1.0 - share) * task + share * match


def teacher_outputs(net: TandemNet, data: Dataset, batch_size: int = 512) -> torch.Tensor:
    """The network's outputs on ``data`` as it stands (before tuning: the float ANN), the
    targets of ``TrainOptions.distill``."""
    dev = next(net.parameters()).device
    outs = []
    with torch.no_grad():
        for i in range(0, len(data.x), batch_size):
            outs.append(net(torch.as_tensor(data.x[i:i + batch_size], device=dev)).float())
    return torch.cat(outs)
