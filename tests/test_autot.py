"""`convert --timesteps auto`: the chosen T meets the allowed accuracy drop on the validation
data and the candidate before it does not (as `evaluate` measures them independently); an
impossible drop is one clear error with nothing written; with tuning, T is chosen on the
tuned network; regression is judged by PSNR; misuse is a usage error."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from snncompile.app.cli import main
from snncompile.measure.evaluate import evaluate_artifact


def cli(*args: str) -> subprocess.CompletedProcess:
    """In-process run of the command line (no interpreter start-up)."""
    r = CliRunner().invoke(main, [str(a) for a in args])
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return subprocess.CompletedProcess(args, r.exit_code, r.stdout, r.stderr)


def convert_auto(d: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return cli("convert", d / "digits_cnn.onnx", "--calib", d / "calib.npz", "--timesteps", "auto",
               "--val", d / "val.npz", "-o", out, *extra)


def test_chosen_t_is_the_first_candidate_that_meets_the_drop(digits_dir, tmp_path):
    out = tmp_path / "auto"
    # without the bias calibration, which fits each candidate's biases to its own T: the
    # artifact (calibrated for the chosen T) would score the candidate before differently
    r = convert_auto(digits_dir, out, "--max-accuracy-drop", "1.0", "--no-calibrate-bias")
    assert r.returncode == 0, r.stderr
    assert "time window search" in r.stdout and "meets" in r.stdout
    rec = json.loads((out / "compile.json").read_text())["auto_timesteps"]
    (search,) = rec["searches"]
    trials, chosen = search["trials"], rec["chosen"]
    assert rec["metric"] == "accuracy" and rec["max_drop"] == 1.0 and chosen == trials[-1]["timesteps"]
    assert [t["timesteps"] for t in trials] == rec["candidates"][:len(trials)]
    assert len(trials) >= 2 and not any(t["meets"] for t in trials[:-1]) and trials[-1]["meets"]
    # measured again, independently, by evaluate: the chosen T meets, the candidate before does not
    prev = trials[-2]["timesteps"]
    res = evaluate_artifact(str(out), str(digits_dir / "val.npz"), [prev, chosen])
    assert res["timesteps"] == chosen
    by_t = {row["timesteps"]: row for row in res["sweep"]}
    for T in (prev, chosen):
        drop = 100 * (by_t[T]["ann_accuracy"] - by_t[T]["snn_accuracy"])
        assert drop == pytest.approx(next(t["drop"] for t in trials if t["timesteps"] == T))
    assert 100 * (by_t[chosen]["ann_accuracy"] - by_t[chosen]["snn_accuracy"]) <= 1.0
    assert 100 * (by_t[prev]["ann_accuracy"] - by_t[prev]["snn_accuracy"]) > 1.0


def test_impossible_drop_is_a_clear_error_and_writes_nothing(digits_dir, tmp_path):
    out = tmp_path / "never"
    r = convert_auto(digits_dir, out, "--max-accuracy-drop", "0", "--timesteps-candidates", "1,2")
    assert r.returncode == 3, r.stderr
    assert not out.exists()
    for words in ("no time window in 1,2", "the best is T=2", "fix:", "--max-accuracy-drop",
                  "--timesteps-candidates 1,2,4"):
        assert words in r.stderr


@pytest.mark.parametrize("args, words", [
    (["--timesteps", "auto"], "--timesteps auto needs --val"),
    (["-T", "8", "--max-accuracy-drop", "2"], "only used with --timesteps auto"),
    (["--timesteps", "sixteen"], "'sixteen' is neither a whole number >= 1 nor auto"),
    (["--timesteps", "auto", "--val", "VAL", "--timesteps-candidates", "8-4"], "ranges separated"),
    (["--timesteps", "auto", "--val", "VAL", "--max-accuracy-drop", "-1"],
     "Invalid value for '--max-accuracy-drop': -1.0 is not in the range 0<=x<=100"),
    (["--timesteps", "auto", "--val", "VAL", "--max-psnr-drop", "1"], "give --max-accuracy-drop"),
])
def test_misuse_is_a_usage_error(args, words, digits_dir, tmp_path):
    args = [str(digits_dir / "val.npz") if a == "VAL" else a for a in args]
    r = cli("convert", digits_dir / "digits_cnn.onnx", "--calib", digits_dir / "calib.npz",
            "-o", tmp_path / "o", *args)
    assert r.returncode == 2, r.stderr
    assert words in r.stderr and not (tmp_path / "o").exists()


def test_with_tuning_t_is_chosen_on_the_tuned_network(digits_dir, tmp_path):
    out = tmp_path / "tuned"
    r = convert_auto(digits_dir, out, "--bits", "8", "--train", digits_dir / "train.npz",
                     "--epochs", "2", "--max-accuracy-drop", "5", "--timesteps-candidates", "2,4,8")
    assert r.returncode == 0, r.stderr
    info = json.loads((out / "compile.json").read_text())
    rec = info["auto_timesteps"]
    assert [s["phase"] for s in rec["searches"]] == ["conversion", "tuned"]
    first, final = rec["searches"]
    assert final["trials"][-1]["meets"] and final["chosen"] == rec["chosen"]
    assert json.loads((out / "ir.json").read_text())["timesteps"] == rec["chosen"]
    assert info["options"]["timesteps"] == rec["chosen"] and "tuning" in info


def test_regression_is_judged_by_psnr(onnx_kit, tmp_path):
    from onnx import helper as H

    from snncompile.calibrate.timesteps import AutoTOptions
    from snncompile.app.compile import CompileRequest, compile_model

    rng = np.random.default_rng(0)
    inits = {"a": rng.normal(0, 0.6, (16, 6)).astype(np.float32),
             "b": rng.normal(0, 0.4, (4, 16)).astype(np.float32)}
    nodes = [H.make_node("Gemm", ["x", "a"], ["h"], transB=1), H.make_node("Relu", ["h"], ["r"]),
             H.make_node("Gemm", ["r", "b"], ["y"], transB=1)]
    model = onnx_kit.model(nodes, inits, in_shape=(6,))
    onnx.save(model, str(tmp_path / "m.onnx"))
    x = rng.random((64, 6)).astype(np.float32)
    y = onnx_kit.run_ort(model, x) + rng.normal(0, 0.05, (64, 4)).astype(np.float32)
    np.savez(tmp_path / "v.npz", x=x, y=y)
    s = compile_model(CompileRequest(model=str(tmp_path / "m.onnx"), out=str(tmp_path / "o"),
                                     calib=str(tmp_path / "v.npz"), val=str(tmp_path / "v.npz"),
                                     auto_timesteps=AutoTOptions(max_psnr_drop=0.5)))
    rec = s["auto_timesteps"]
    assert rec["metric"] == "psnr" and rec["drop_unit"] == "dB" and rec["max_drop"] == 0.5
    trials = rec["searches"][-1]["trials"]
    assert trials[-1]["meets"] and trials[-1]["drop"] <= 0.5 and s["timesteps"] == rec["chosen"]
    assert all(t["drop"] > 0.5 for t in trials[:-1])
