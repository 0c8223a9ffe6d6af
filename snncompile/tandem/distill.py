"""Knowledge distillation from the original ANN (``--distill W``).

The converted network starts as a copy of the ANN, so the ANN is a teacher that needs no
extra data: its outputs on the training inputs, computed once with onnxruntime on the
user's ONNX file, are soft targets the tuned SNN is pulled towards. For classification the
batch loss becomes

    (1 - W) * CE(student, labels) + W * tau^2 * KL(softmax(teacher / tau) || softmax(student / tau))

(Hinton et al.'s form; ``tau^2`` keeps the soft term's gradient scale independent of the
temperature). For regression the soft term is the MSE to the teacher's output. With the
training labels all but memorised by the ANN, the labels alone give the tuned network
little to learn from; the teacher's logits say how confident, and about which other class,
each answer should be, which is what a network squeezed into counts 0..T loses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from ..calibrate import onnx_forward
from ..errors import UsageError
from ..ir import Graph


def check(weight: float, temperature: float) -> None:
    """Refuse values that make no loss: a weight outside [0, 1], a temperature <= 0."""
    if not 0.0 <= weight <= 1.0:
        raise UsageError(f"--distill must lie in 0..1 (the weight of the teacher's term), got {weight}",
                         "use e.g. --distill 0.5; 0 turns distillation off")
    if not temperature > 0.0:
        raise UsageError(f"--distill-temperature must be > 0, got {temperature}",
                         "use e.g. --distill-temperature 4 (1 matches the teacher's plain softmax)")


@dataclass(frozen=True)
class Teacher:
    """The ANN's outputs on the training inputs and (optionally) the validation inputs,
    row for row."""

    train: np.ndarray
    val: np.ndarray | None = None
    fn: Callable[[np.ndarray], np.ndarray] | None = None  # the ANN on any inputs


def teacher_function(model: onnx.ModelProto, ann: Graph) -> Callable[[np.ndarray], np.ndarray]:
    """The original ANN as a function of a batch of inputs (one onnxruntime session)."""
    from ..calibrate import _session

    name = ann.meta["onnx_output"]
    sess = _session(model, [name])
    inp = ann.meta["onnx_input"]
    return lambda x: sess.run([name], {inp: np.ascontiguousarray(x, np.float32)})[0]


def mixed_inputs(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Each input blended with another of the batch, ``l * x_i + (1 - l) * x_j`` with
    ``l`` uniform in [0, 1] per sample: new inputs between the data, where only the teacher
    (not the labels) says what the answer should be."""
    n = x.shape[0]
    lam = torch.rand(n, generator=gen).to(x.device, x.dtype).reshape((n,) + (1,) * (x.dim() - 1))
    j = torch.randperm(n, generator=gen).to(x.device)
    return lam * x + (1 - lam) * x[j]


def teacher_outputs(model: onnx.ModelProto, ann: Graph, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The original ANN's outputs (logits for classification) on ``x``, by onnxruntime."""
    name = ann.meta["onnx_output"]
    return np.concatenate([b[name] for b in onnx_forward(model, ann.meta["onnx_input"], [name], x, batch_size)])


def distill_loss(out: torch.Tensor, y: torch.Tensor, teacher: torch.Tensor, weight: float,
                 temperature: float, classification: bool) -> torch.Tensor:
    """The blended loss of a batch: the task loss against ``y`` and the soft term against
    the ``teacher`` outputs of the same samples, weighted ``1 - weight`` and ``weight``."""
    teacher = teacher.to(out.dtype).reshape(out.shape)
    if classification:
        hard = F.cross_entropy(out, y.long())
        t = float(temperature)
        soft = F.kl_div(F.log_softmax(out / t, dim=1), F.log_softmax(teacher / t, dim=1),
                        reduction="batchmean", log_target=True) * t * t
    else:
        hard = F.mse_loss(out.reshape(y.shape), y.to(out.dtype))
        soft = F.mse_loss(out, teacher)
    return (1.0 - weight) * hard + weight * soft
