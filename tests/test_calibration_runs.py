"""The label-free calibration's runs of one layer alone, on input spike trains recorded
once and handed to the simulator as uint8 codes (passes/calibrate_bias.py, _LayerRuns),
give exactly the whole network's values at that layer: binary and signed spikes, a
convolution reading the codes (int8 kernels where the CPU has them) and a dense layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import bad_inputs as corpus
from snncompile.app.cli import main
from snncompile.ir import IFNode
from snncompile.ir.serialize import load_graph
from snncompile.passes.calibrate_bias import _LayerRuns
from snncompile.sim.evaluator import run_window
from snncompile.sim.simulator import quantize_input


@pytest.mark.parametrize("spikes", ["binary", "signed"])
def test_a_layer_alone_on_recorded_codes_matches_the_whole_network(spikes, tmp_path, onnx_kit):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                        nn.Flatten(), nn.Linear(64, 10)).eval()
    kit = corpus.Kit(tmp_path)
    model = kit.save_model(onnx_kit.from_torch(net, corpus.IN_SHAPE))
    T = 6
    r = CliRunner().invoke(main, ["convert", model, "-o", kit.out, "--calib", kit.data, "-T", str(T),
                                  "--bits", "7", "--spikes", spikes, "--no-calibrate-bias"])
    assert r.exit_code == 0, r.output
    g = load_graph(kit.out)
    x, _ = corpus.tiny_data(40, seed=1)
    xq = quantize_input(g, x)
    whole = run_window(g, torch.as_tensor(xq), T)
    ifs = [n.name for n in g.nodes if isinstance(n, IFNode)]
    for name in ifs[1:] + list(g.outputs):
        n = g[name]
        want = (whole.counts if isinstance(n, IFNode) else whole.acc)[name].cpu().numpy()
        want = want * np.broadcast_to(n.out_scale, n.shape) / T
        runs = _LayerRuns(g, xq, T, name)
        assert runs.front, name
        np.testing.assert_array_equal(runs.values(g), want)
        np.testing.assert_array_equal(runs.values(g), want)  # the recorded trains stay as they were
