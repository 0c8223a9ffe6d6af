"""cyclesim refuses a chip too small for the model's neurons right after import, before
calibration (Backend.check_early), from a lower bound of its mapper's cores that never
refuses what the full check accepts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import bad_inputs as corpus
from snncompile.app.cli import main
from snncompile.frontend import import_onnx
from snncompile.ir.serialize import load_graph
from snncompile.plugin import get_backend
from snncompile_cyclesim.mapping import cores_per_population, neuron_bound

# the tiny model at 8 neurons per core: its conv layer's 32 units take 4 cores, the 10
# logits 2, whatever the slice's axons and synapses (all far below a core's)
SMALL = ["--target-option", "neurons_per_core=8"]


def convert(kit: corpus.Kit, *extra: str) -> tuple[int, str]:
    r = CliRunner().invoke(main, [*kit.convert(*extra), "--target", "cyclesim"])
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    return r.exit_code, r.output


def test_too_small_a_chip_is_refused_before_calibration(tmp_path, monkeypatch):
    def no_calibration(*a, **k):
        raise AssertionError("calibration reached")

    monkeypatch.setattr("snncompile.app.compile.calibrated", no_calibration)
    kit = corpus.Kit(tmp_path)
    code, out = convert(kit, *SMALL, "--target-option", "cores=5")
    assert code == 6, out
    assert "Traceback" not in out and "calibration reached" not in out, out
    assert "cores needed at least, by neurons alone (6) exceeds max (5)" in out, out
    assert "--target-option cores=6" in out, out
    assert not Path(kit.out).exists()


def test_at_the_edge_the_early_bound_lets_through_what_the_full_check_accepts(tmp_path):
    kit = corpus.Kit(tmp_path)
    code, out = convert(kit, *SMALL, "--target-option", "cores=6")
    assert code == 0, out
    # the late check's message is of the same kind, with the mapper's exact count
    code, out = convert(kit, *SMALL, "--target-option", "cores=6", "--target-option", "synapses_per_core=40",
                        "--force")
    assert code == 6 and "cores needed (" in out and "cores=" in out, out


def _residual(onnx_kit):
    """Conv-ReLU, a max pool, a residual add read by a conv through no ReLU (a linear value,
    carried by two populations after frontend.linear), global pool and a classifier."""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.c1, self.c2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1)
            self.c3, self.c4 = nn.Conv2d(6, 6, 1), nn.Conv2d(6, 6, 1)
            self.fc = nn.Linear(6, 10)

        def forward(self, x):
            h = nn.functional.max_pool2d(torch.relu(self.c1(x)), 2)
            h = self.c3(torch.relu(self.c2(h))) + h
            return self.fc(torch.relu(self.c4(h)).mean((2, 3)))

    return onnx_kit.from_torch(Net().eval(), (3, 8, 8))


@pytest.mark.parametrize("which", ["tiny", "pooled", "residual"])
def test_the_bound_on_the_ann_never_exceeds_the_mapper_on_the_snn(which, tmp_path, onnx_kit):
    kit = corpus.Kit(tmp_path)
    if which == "residual":
        model = kit.save_model(_residual(onnx_kit))
        data = kit.save_data(x=np.random.default_rng(0).random((20, 3, 8, 8), dtype=np.float32),
                             y=np.arange(20) % 10)
    else:
        model = kit.model if which == "tiny" else kit.save_model(corpus.tiny_model(pool=("MaxPool", {})))
        data = kit.data
    r = CliRunner().invoke(main, ["convert", model, "-o", kit.out, "--calib", data, "-T", "4"])
    assert r.exit_code == 0, r.output
    snn = load_graph(kit.out)
    from snncompile.app.compile import _carry_linear_values  # the graph check_early is given
    carried, rewrites = _carry_linear_values(onnx.load(model), None)  # as convert, no --fanin
    assert bool(rewrites) == (which == "residual")
    ann = import_onnx(carried).graph
    for opts in ({}, {"neurons_per_core": "1"}, {"neurons_per_core": "3"}, {"neurons_per_core": "7"},
                 {"neurons_per_core": "8", "axons_per_core": "9"}, {"synapses_per_core": "60"}):
        b = get_backend("cyclesim", opts)
        bound, full = neuron_bound(ann, b.arch), sum(cores_per_population(snn, b.arch).values())
        assert 0 < bound <= full, (opts, bound, full)
        # the check itself, at the bound's edge
        assert get_backend("cyclesim", dict(opts, cores=str(bound))).check_early(ann) == []
        assert get_backend("cyclesim", dict(opts, cores=str(bound - 1))).check_early(ann)
