"""Structured fan-in (--fanin-mode channels): whole input channels per output channel, and the
saved artifact meets --fanin with that pattern."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from snncompile.passes.convert import ConversionOptions
from snncompile.errors import UsageError
from snncompile.ir import Conv2dNode
from snncompile.app.compile import CompileRequest, compile_model
from snncompile.ir.serialize import load_graph
from snncompile.passes.constrain import channel_mask, topk_mask
from snncompile.targets.rules import violations


def test_channel_mask_keeps_whole_channels_of_largest_l1(rng):
    w = rng.normal(size=(3, 5, 3, 3)) * 0.01
    w[0, 4] += 1.0   # channel 4 strongest for output 0, then 1
    w[0, 1] += 0.5
    w[1, 0, 0, 0] = 9.0  # one huge tap: L1 of channel 0 wins for output 1
    m = channel_mask(w, 20)  # 20 // 9 = 2 whole channels
    assert m.shape == w.shape
    kept = m.reshape(3, 5, 9)
    assert set(np.flatnonzero(kept[0].all(axis=1))) == {1, 4}
    assert 0 in set(np.flatnonzero(kept[1].all(axis=1)))
    assert ((kept.sum(axis=2) == 0) | (kept.sum(axis=2) == 9)).all()  # channels all or nothing
    assert (kept.sum(axis=(1, 2)) == 18).all()
    assert channel_mask(w, 3).reshape(3, -1).sum(1).tolist() == [9, 9, 9]  # below one kernel: one channel
    assert channel_mask(w, 45).all()
    d = rng.normal(size=(4, 10))
    np.testing.assert_array_equal(channel_mask(d, 3), topk_mask(d, 3))  # dense: magnitude


def _tiny_cnn(tmp_path):
    torch.manual_seed(0)
    f = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, stride=2, padding=1),
                      nn.ReLU(), nn.Flatten(), nn.Linear(8 * 3 * 3, 5)).eval()
    path = tmp_path / "m.onnx"
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(f, (torch.zeros(1, 1, 6, 6),), buf, dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    path.write_bytes(buf.getvalue())
    x = np.random.default_rng(0).random((64, 1, 6, 6)).astype(np.float32)
    y = np.arange(64) % 5
    for name in ("calib", "train", "val"):
        np.savez(tmp_path / f"{name}.npz", x=x, y=y)
    onnx.checker.check_model(str(path))
    return path


def test_tuned_artifact_meets_fanin_with_whole_channels(tmp_path):
    model = _tiny_cnn(tmp_path)
    req = CompileRequest(model=str(model), out=str(tmp_path / "out"), calib=str(tmp_path / "calib.npz"),
                         options=ConversionOptions(timesteps=4, weight_bits=8), fanin=20,
                         fanin_mode="channels", train=str(tmp_path / "train.npz"),
                         val=str(tmp_path / "val.npz"), epochs=3, batch_size=32)
    compile_model(req)
    g = load_graph(str(tmp_path / "out"))
    assert violations(g, bits=8, fanin=20) == []
    conv2 = [n for n in g.nodes if isinstance(n, Conv2dNode)][1]
    nz = (conv2.weight_int != 0).reshape(8, 4, 9)
    assert (nz.sum(axis=1) <= 2).all() and (nz.any(axis=2).sum(axis=1) <= 2).all()  # <= 2 channels each


def test_unknown_fanin_mode_is_refused_before_work(tmp_path):
    model = _tiny_cnn(tmp_path)
    req = CompileRequest(model=str(model), out=str(tmp_path / "out"), fanin=20, fanin_mode="rows")
    with pytest.raises(UsageError, match="fanin-mode"):
        compile_model(req)
    assert not (tmp_path / "out").exists()
