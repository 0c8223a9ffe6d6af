"""The Python API (snncompile.convert/evaluate/run/check): the example's steps on a torch
module, typed results that agree with the CLI's, the project's own errors, and an import
that stays light."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import snncompile as sc

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("python_api_example", ROOT / "examples/python_api.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def steps(example, tmp_path_factory):
    """The example run end to end (few epochs: the steps, not the accuracy, are tested)."""
    return example.main(tmp_path_factory.mktemp("api"), epochs=3)


def test_the_examples_steps_give_typed_results(steps):
    build, ev, ran, gate = steps["build"], steps["evaluation"], steps["run"], steps["check"]
    assert isinstance(build, sc.Build) and build.target == "cyclesim" and build.timesteps == 16
    assert (build.path / "cyclesim").is_dir() and build.layers == 2
    assert isinstance(ev, sc.Evaluation) and ev.timesteps == 16 and ev.samples == 540
    assert [p.timesteps for p in ev.sweep] == [4, 8, 16]
    assert 0.5 < ev.ann_accuracy <= 1 and ev.snn_accuracy is not None and ev.ann_mse is None
    assert all(isinstance(layer, sc.LayerFigures) for layer in ev.layers)
    assert ev.layers[1].synapses == "avgpool2d>conv2d"
    assert isinstance(ran, sc.RunResult) and ran.bit_exact and ran.samples == 64
    assert isinstance(gate, sc.CheckResult) and not gate.passed and gate.failed()


def test_api_and_cli_report_the_same_figures(steps, example, tmp_path):
    build = steps["build"]
    x, y = example.digits()["test"]
    np.savez(tmp_path / "test.npz", x=x, y=y)
    r = subprocess.run([sys.executable, "-m", "snncompile", "evaluate", str(build.path), "--data",
                        str(tmp_path / "test.npz"), "--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    cli = json.loads(r.stdout)
    ev = sc.evaluate(build, str(tmp_path / "test.npz"))  # a .npz path works as arrays do
    assert ev.snn_accuracy == cli["snn_accuracy"] and ev.synops_per_sample == cli["synops_per_sample"]
    assert [layer.max_fanin for layer in ev.layers] == [row["max_fanin"] for row in cli["layers"]]


def test_onnx_files_and_the_clis_options(digits_dir, tmp_path):
    build = sc.convert(digits_dir / "digits_cnn.onnx", tmp_path / "b", calib=digits_dir / "calib.npz",
                       timesteps=8, input_mode="every_step", fanin=64, target_options={})
    assert build.timesteps == 8 and any("--fanin 64 pruned" in w for w in build.warnings)
    assert max(layer.max_fanin for layer in sc.evaluate(build, digits_dir / "test.npz").layers) <= 64
    assert json.loads((tmp_path / "b" / "compile.json").read_text())["options"]["input_mode"] == "every_step"


def test_mistakes_raise_the_projects_errors(digits_dir, tmp_path):
    with pytest.raises(sc.UsageError, match="unknown convert option"):
        sc.convert(digits_dir / "digits_cnn.onnx", tmp_path / "a", fan_in=64)
    with pytest.raises(sc.UsageError, match="--timesteps"):
        sc.convert(digits_dir / "digits_cnn.onnx", tmp_path / "a", timesteps="many")
    with pytest.raises(sc.UsageError, match="cannot convert a list"):
        sc.convert([1, 2], tmp_path / "a")
    torch = pytest.importorskip("torch")
    with pytest.raises(sc.UsageError, match="example input"):
        sc.convert(torch.nn.Linear(3, 2), tmp_path / "a")
    with pytest.raises(sc.ModelError, match="could not export"):
        sc.convert(torch.nn.Linear(3, 2), tmp_path / "a", input_shape=(5,))
    build = sc.convert(digits_dir / "digits_cnn.onnx", tmp_path / "ok", timesteps=4)
    with pytest.raises(sc.DataError, match="the data array") as e:
        sc.evaluate(build, np.zeros((4, 1, 8, 7), np.float32), np.zeros(4, int))
    assert "snncompile-api" not in str(e.value)  # the temporary file is not named
    with pytest.raises(sc.SnnCompileError):
        sc.run(build, np.zeros((4, 1, 8, 8), np.float32))  # built for sim: nothing to run


def test_import_snncompile_stays_light():
    """`import snncompile` loads neither numpy nor torch; the API loads on first use."""
    probe = ("import sys, snncompile; before = [m for m in ('torch', 'numpy', 'onnx') if m in sys.modules]; "
             "snncompile.convert; print(before, 'torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[] False", r.stdout + r.stderr
