"""Calibration at ImageNet size: batches sized by activation bytes, and the user's model
left as it was (the extra outputs onnxruntime needs go on only while it is serialized)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from snncompile.calibrate import statistics
from snncompile.frontend import import_onnx


def test_batches_shrink_to_the_activation_budget_and_the_model_is_left_as_it_was(onnx_kit, monkeypatch):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1), nn.ReLU(),
                        nn.Flatten(), nn.Linear(4 * 8 * 8, 5))
    model = onnx_kit.from_torch(net, (3, 8, 8))
    outputs = [o.name for o in model.graph.output]
    graph = import_onnx(model).graph
    x = np.random.default_rng(0).uniform(-1, 1, (40, 3, 8, 8)).astype(np.float32)
    full = statistics.activation_scales(model, graph, x, "channel")
    sizes = []
    forward = statistics.onnx_forward

    def spy(model, name, tensors, x, batch_size=256):
        sizes.append(batch_size)
        yield from forward(model, name, tensors, x, batch_size)

    monkeypatch.setattr(statistics, "onnx_forward", spy)
    monkeypatch.setattr(statistics, "BATCH_BYTES", 4 * (8 + 4) * 64 * 3)  # three samples' ReLU outputs
    small = statistics.activation_scales(model, graph, x, "channel")
    assert sizes == [3]
    for k in full.lam:  # every value is kept at this size: the same percentiles, batch or not
        np.testing.assert_allclose(small.lam[k], full.lam[k], rtol=1e-6)
    assert [o.name for o in model.graph.output] == outputs
