"""`snncompile report`: renders on the digits model (every figure a real PNG that the
Markdown and HTML show, numbers equal to `evaluate --json`), the per-layer divergence points
at a layer we broke on purpose, regression models get PSNR, and bad inputs are one clear
error with nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from snncompile.targets.artifact import read_artifact
from snncompile.ir.serialize import save_graph

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIGURES = ["accuracy_vs_timesteps.png", "firing_rates.png", "synops_vs_macs.png",
           "weight_histograms.png", "fanin.png", "divergence.png"]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snncompile", *args], capture_output=True,
                          text=True, timeout=300)


def cli_here(*args: str) -> subprocess.CompletedProcess:
    """The command line in this process (no interpreter start-up), for the error cases."""
    from click.testing import CliRunner

    from snncompile.app.cli import main

    r = CliRunner().invoke(main, list(args))
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return subprocess.CompletedProcess(args, r.exit_code, r.stdout, r.stderr)


@pytest.fixture(scope="module")
def build(digits_dir, tmp_path_factory) -> Path:
    """The digits CNN at T = 4 with 8-bit weights, under a --fanin that its largest layer
    (576) just meets, so the report has a limit to draw but nothing is pruned."""
    out = tmp_path_factory.mktemp("report") / "b"
    r = cli_here("convert", str(digits_dir / "digits_cnn.onnx"), "--calib", str(digits_dir / "calib.npz"),
                 "-T", "4", "--bits", "8", "--fanin", "576", "-o", str(out))
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def rendered(build, digits_dir) -> tuple[Path, dict]:
    rep = build.parent / "rep"
    r = cli("report", str(build), "--data", str(digits_dir / "test.npz"), "-o", str(rep),
            "--timesteps", "2,8", "--json")
    assert r.returncode == 0, r.stderr
    return rep, json.loads(r.stdout)


def test_report_renders_every_figure(rendered):
    rep, res = rendered
    assert set(FIGURES) | {"report.md", "report.html", "report.json"} == {p.name for p in rep.iterdir()}
    assert sorted(res["files"]) == sorted(p.name for p in rep.iterdir())
    md = (rep / "report.md").read_text()
    html = (rep / "report.html").read_text()
    for f in FIGURES:
        data = (rep / f).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000, f  # a drawn figure, not a blank
        assert f"]({f})" in md
        assert f"data-file='{f}' src='data:image/png;base64," in html
    assert not any(p.name.startswith(".") for p in rep.parent.iterdir())  # no temporary left


def test_report_numbers_match_evaluate(rendered, build, digits_dir):
    """`evaluate --json` prints evaluate_artifact's result; the report shows the same numbers."""
    from snncompile.measure.evaluate import evaluate_artifact

    rep, res = rendered
    ev = evaluate_artifact(str(build), str(digits_dir / "test.npz"), [2, 8, 4])
    assert [s["timesteps"] for s in res["sweep"]] == [2, 4, 8]  # the build's own T added
    by_t = {s["timesteps"]: s for s in ev["sweep"]}
    for s in res["sweep"]:
        assert s["snn_accuracy"] == by_t[s["timesteps"]]["snn_accuracy"]
        assert s["synops_per_sample"] == by_t[s["timesteps"]]["synops_per_sample"]
    assert res["evaluation"]["snn_accuracy"] == ev["snn_accuracy"]  # at T = 4 (last in both)
    ev_layers = {l["name"]: l for l in ev["layers"]}
    for l in res["layers"]:
        assert l["max_fanin"] == ev_layers[l["name"]]["max_fanin"] <= 576
        assert l["firing_rate"] == ev_layers[l["name"]].get("firing_rate")
    # Per-layer SynOps add up to the total; the first layer reads the analog input.
    total = sum(l["synops_per_sample"] for l in res["layers"])
    assert total == pytest.approx(ev["synops_per_sample"], rel=1e-9)
    assert not res["layers"][0]["spike_driven"] and res["layers"][0]["synops_per_sample"] == 0
    assert res["fanin_limits"] == {"--fanin": 576}
    assert json.loads((rep / "report.json").read_text())["evaluation"] == res["evaluation"]
    md = (rep / "report.md").read_text()
    assert f"SNN {ev['snn_accuracy']:.4f}" in md


def test_divergence_finds_the_broken_layer(rendered, build, digits_dir, tmp_path):
    """Thresholds of the second IF layer 8x too high (an un-normalized layer): its
    correlation with the ANN falls, the first layer's (upstream) does not change."""
    import shutil

    from snncompile.measure.report import measure_report

    g = read_artifact(build).graph
    ifs = [n for n in g.nodes if n.op == "if"]
    ifs[1].threshold = ifs[1].threshold * 8
    shutil.copytree(build, tmp_path / "broken")
    save_graph(g, tmp_path / "broken")
    good = {l["name"]: l for l in rendered[1]["layers"]}
    bad = {l.name: l for l in measure_report(str(tmp_path / "broken"), str(digits_dir / "test.npz"), [4]).layers}
    first, second = ifs[0].name, ifs[1].name
    assert bad[first].correlation == pytest.approx(good[first]["correlation"], abs=1e-12)
    assert good[second]["correlation"] > 0.9
    assert (bad[second].correlation or 0.0) < good[second]["correlation"] - 0.2
    assert bad[second].relative_rmse > good[second]["relative_rmse"]


def test_agreement_is_pearson():
    from snncompile.measure.report.measure import Agreement

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=1000), rng.normal(size=1000)
    b = 0.5 * a + b
    ag = Agreement()
    ag.add(a[:300], b[:300])
    ag.add(a[300:], b[300:])
    assert ag.correlation() == pytest.approx(np.corrcoef(a, b)[0, 1], rel=1e-9)
    assert ag.relative_rmse() == pytest.approx(np.sqrt(np.mean((b - a) ** 2) / np.mean(a ** 2)))
    const = Agreement()
    const.add(np.ones(5), np.arange(5.0))
    assert const.correlation() is None


def test_regression_report_uses_psnr(onnx_kit, tmp_path, rng, monkeypatch):
    """A float-target model: the sweep and the summary are MSE/PSNR; each T of the sweep
    is simulated once (the build's T too, which the per-layer figures reuse)."""
    from snncompile.app.compile import CompileRequest, compile_model
    from snncompile.passes.convert import ConversionOptions
    from snncompile.measure import evaluate
    from snncompile.measure.report import measure, write_report
    from snncompile.sim.simulator import simulate
    from onnx import helper
    import onnx

    w1 = rng.normal(size=(6, 12)).astype(np.float32)
    w2 = rng.normal(size=(12, 3)).astype(np.float32) * 0.3
    m = onnx_kit.model([helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
                        helper.make_node("MatMul", ["r", "w2"], ["y"])], {"w1": w1, "w2": w2}, in_shape=(6,))
    onnx.save(m, tmp_path / "m.onnx")
    x = rng.uniform(-1, 1, size=(200, 6)).astype(np.float32)
    y = onnx_kit.run_ort(m, x)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    compile_model(CompileRequest(model=str(tmp_path / "m.onnx"), out=str(tmp_path / "b"),
                                 calib=str(tmp_path / "d.npz"), options=ConversionOptions(timesteps=8)))
    simulated = []

    def counting(g, x, timesteps=None, **kw):
        simulated.append(timesteps)
        return simulate(g, x, timesteps=timesteps, **kw)

    for module in (evaluate, measure):
        monkeypatch.setattr(module, "simulate", counting, raising=False)
    res = write_report(str(tmp_path / "b"), str(tmp_path / "d.npz"), str(tmp_path / "r"), [4])
    assert sorted(simulated) == [4, 8]
    assert res["task"] == "regression"
    assert res["evaluation"]["ann_mse"] < 1e-10 and np.isfinite(res["evaluation"]["snn_psnr"])
    md = (tmp_path / "r/report.md").read_text()
    assert "PSNR (dB): ANN inf" in md and "| SNN PSNR (dB) |" in md
    assert [s["timesteps"] for s in res["sweep"]] == [4, 8]


def test_bad_inputs_are_clear_and_write_nothing(build, digits_dir, tmp_path):
    data = str(digits_dir / "test.npz")
    (tmp_path / "exists").mkdir()
    (tmp_path / "exists/keep.txt").write_text("mine")
    r = cli_here("report", str(build), "--data", data, "-o", str(tmp_path / "exists"))
    assert r.returncode == 2 and "already exists" in r.stderr and "--force" in r.stderr
    assert "Traceback" not in r.stderr
    assert [p.name for p in (tmp_path / "exists").iterdir()] == ["keep.txt"]

    np.savez(tmp_path / "other.npz", x=np.zeros((4, 1, 6, 6), np.float32), y=np.zeros(4, np.int64))
    r = cli_here("report", str(build), "--data", str(tmp_path / "other.npz"), "-o", str(tmp_path / "r1"))
    assert r.returncode == 4 and "error:" in r.stderr and "Traceback" not in r.stderr

    r = cli_here("report", str(tmp_path / "exists"), "--data", data, "-o", str(tmp_path / "r2"))
    assert r.returncode == 5 and "error:" in r.stderr and "Traceback" not in r.stderr

    r = cli_here("report", str(build), "--data", data, "-o", str(tmp_path / "r3"), "--timesteps", "0")
    assert r.returncode == 2 and "--timesteps" in r.stderr
    r = cli_here("report", str(build), "--data", data, "-o", str(tmp_path / "no/such/dir"))
    assert r.returncode == 2 and "does not exist" in r.stderr
    assert sorted(os.listdir(tmp_path)) == ["exists", "other.npz"]  # nothing half-written
