"""The command line end to end on the digits example, and every bad input the user can give:
one clear message, a non-zero exit, no traceback, nothing half-written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snncompile", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """The demo's model and data, trained here exactly as `make demo` does."""
    out = tmp_path_factory.mktemp("digits")
    subprocess.run([sys.executable, str(ROOT / "examples/digits/train.py"), "--out", str(out)],
                   check=True, capture_output=True, timeout=300)
    return out


@pytest.fixture(scope="module")
def compiled(digits, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("compiled") / "snn"
    r = run("convert", str(digits / "digits_cnn.onnx"), "--calib", str(digits / "calib.npz"),
            "--timesteps", "32", "-o", str(out))
    assert r.returncode == 0, r.stderr
    return out


def test_digits_conversion_within_one_point_at_t32(digits, compiled):
    r = run("evaluate", str(compiled), "--data", str(digits / "test.npz"), "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["timesteps"] == 32
    ann_reported = json.loads((digits / "ann_metrics.json").read_text())["test_accuracy"]
    assert res["ann_accuracy"] == pytest.approx(ann_reported, abs=1e-9)  # onnxruntime == torch
    assert res["snn_accuracy"] >= res["ann_accuracy"] - 0.01
    assert res["synops_per_sample"] > 0 and res["ann_macs_per_sample"] == 91776
    names = [layer["name"] for layer in res["layers"]]
    assert len(names) == 4 and res["layers"][-1]["kind"] == "output"
    for layer in res["layers"]:
        assert {"name", "kind", "neurons", "max_fanin", "weight_bits", "spikes_per_sample"} <= set(layer)
    assert res["layers"][1]["max_fanin"] == 16 * 9 * 4  # sum pool 2x2 into conv 3x3x16


def test_timestep_sweep(digits, compiled):
    r = run("evaluate", str(compiled), "--data", str(digits / "test.npz"), "--timesteps", "4,8,16,32", "--json")
    assert r.returncode == 0, r.stderr
    sweep = json.loads(r.stdout)["sweep"]
    assert [s["timesteps"] for s in sweep] == [4, 8, 16, 32]
    synops = [s["synops_per_sample"] for s in sweep]
    assert synops == sorted(synops)  # more steps, more spikes
    assert sweep[-1]["snn_accuracy"] >= sweep[0]["snn_accuracy"]
    text = run("evaluate", str(compiled), "--data", str(digits / "test.npz"), "--timesteps", "4,8")
    assert text.returncode == 0 and "SNN accuracy" in text.stdout


def test_artifact_contents_and_reproducibility(digits, compiled, tmp_path):
    assert {"ir.json", "ir.npz", "model.onnx", "compile.json"} <= set(os.listdir(compiled))
    info = json.loads((compiled / "compile.json").read_text())
    assert info["options"]["timesteps"] == 32 and info["calibration_samples"] == 256
    again = tmp_path / "again"
    r = run("convert", str(digits / "digits_cnn.onnx"), "--calib", str(digits / "calib.npz"),
            "--timesteps", "32", "-o", str(again))
    assert r.returncode == 0
    assert (again / "ir.json").read_text() == (compiled / "ir.json").read_text()
    a, b = np.load(again / "ir.npz"), np.load(compiled / "ir.npz")
    assert sorted(a.files) == sorted(b.files)
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k])


def test_inspect(digits, compiled):
    r = run("inspect", str(compiled), "--json")
    assert r.returncode == 0, r.stderr
    nodes = {n["op"]: n for n in json.loads(r.stdout)["nodes"]}
    assert nodes["if"]["threshold"][0] >= 1 and nodes["if"]["reset"] == "subtract"
    assert nodes["conv2d"]["weight_bits"] == 16 and nodes["input"]["scale"][0] > 0
    assert "threshold" in run("inspect", str(compiled)).stdout

    r = run("inspect", str(digits / "digits_cnn.onnx"), "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["convertible"] and rep["ann_macs"] == 91776 and rep["if_layers"] == 3
    assert [layer["op"] for layer in rep["layers"]][:3] == ["input", "conv2d", "relu"]
    assert run("inspect", str(digits / "digits_cnn.onnx")).returncode == 0


def unsupported_model(path: Path) -> None:
    """A model with two unsupported ops: LRN, and Sigmoid in a hidden layer."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 4, 4])
    y = onnx.ValueInfoProto(name="y")
    w = helper.make_tensor("w", TensorProto.FLOAT, [2, 2, 1, 1], np.ones(4, np.float32))
    nodes = [helper.make_node("LRN", ["x"], ["a"], size=3, name="lrn_1"),
             helper.make_node("Sigmoid", ["a"], ["b"], name="sig_1"),
             helper.make_node("Conv", ["b", "w"], ["y"], name="conv_1")]
    m = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [w]),
                          opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(onnx.shape_inference.infer_shapes(m), str(path))


def assert_clean_failure(r: subprocess.CompletedProcess, code: int, *words: str) -> None:
    assert r.returncode == code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    assert r.stderr.startswith("error:") or "unsupported" in r.stderr
    for w in words:
        assert w in r.stderr, (w, r.stderr)


def test_bad_models(tmp_path, digits):
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(os.urandom(300))
    truncated = tmp_path / "truncated.onnx"
    data = (digits / "digits_cnn.onnx").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    for f, word in ((tmp_path / "missing.onnx", "does not exist"), (empty, "empty"),
                    (garbage, str(garbage)), (truncated, str(truncated))):
        out = tmp_path / f"out_{f.stem}"
        assert_clean_failure(run("convert", str(f), "-o", str(out)), 3, word)
        assert not out.exists()
    bad = tmp_path / "bad.onnx"
    unsupported_model(bad)
    out = tmp_path / "out_bad"
    r = run("convert", str(bad), "-o", str(out))
    assert_clean_failure(r, 3, "lrn_1", "LRN", "sig_1", "Sigmoid")
    assert not out.exists()
    r = run("inspect", str(bad), "--json")
    assert r.returncode == 3 and not json.loads(r.stdout)["convertible"]


def test_bad_data_and_outputs(tmp_path, digits, compiled):
    model = str(digits / "digits_cnn.onnx")
    shape = tmp_path / "shape.npz"
    np.savez(shape, x=np.zeros((4, 1, 9, 9), np.float32))
    ints = tmp_path / "ints.npz"
    np.savez(ints, x=np.zeros((4, 1, 8, 8), np.int64))
    nan = tmp_path / "nan.npz"
    np.savez(nan, x=np.full((4, 1, 8, 8), np.nan, np.float32))
    nokey = tmp_path / "nokey.npz"
    np.savez(nokey, inputs=np.zeros((4, 1, 8, 8), np.float32))
    notnpz = tmp_path / "not.npz"
    notnpz.write_text("hello")
    for f, word in ((shape, "(N, 1, 8, 8)"), (ints, "int64"), (nan, "NaN"), (nokey, "no array 'x'"),
                    (notnpz, "not a readable .npz"), (tmp_path / "none.npz", "does not exist")):
        out = tmp_path / f"out_{f.stem}"
        assert_clean_failure(run("convert", model, "--calib", str(f), "-o", str(out)), 4, word)
        assert not out.exists()
        assert not [p for p in os.listdir(tmp_path) if p.startswith(".out_")]  # no temp dirs left
    # output directory that exists: refused, untouched
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    assert_clean_failure(run("convert", model, "-o", str(existing)), 2, "already exists", "--force")
    assert (existing / "keep.txt").read_text() == "mine"
    # evaluate: labels missing, wrong artifact
    assert_clean_failure(run("evaluate", str(compiled), "--data", str(shape)), 4, "(N, 1, 8, 8)")
    nolabels = tmp_path / "nolabels.npz"
    np.savez(nolabels, x=np.zeros((4, 1, 8, 8), np.float32))
    assert_clean_failure(run("evaluate", str(compiled), "--data", str(nolabels)), 4, "'y'")
    assert_clean_failure(run("evaluate", str(tmp_path), "--data", str(nolabels)), 5, "not a compiled")
    assert_clean_failure(run("evaluate", str(compiled), "--data", str(digits / "test.npz"),
                             "--timesteps", "4,x"), 2, "--timesteps")
    assert_clean_failure(run("convert", model, "-o", str(tmp_path / "o"), "--timesteps", "0"), 2, "timesteps")
    assert_clean_failure(run("convert", model, "-o", str(tmp_path / "o"), "--target", "nope"), 2, "sim")


def test_force_replaces_atomically(tmp_path, digits):
    out = tmp_path / "out"
    model = str(digits / "digits_cnn.onnx")
    assert run("convert", model, "-o", str(out), "-T", "4").returncode == 0
    r = run("convert", model, "-o", str(out), "-T", "8", "--force", "--calib", str(digits / "calib.npz"))
    assert r.returncode == 0
    assert json.loads((out / "ir.json").read_text())["timesteps"] == 8
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_help_and_version():
    for cmd in ([], ["convert"], ["evaluate"], ["inspect"]):
        r = run(*cmd, "--help")
        assert r.returncode == 0 and "Usage" in r.stdout
    assert "snncompile" in run("--version").stdout


def test_stride_variant_of_the_example(tmp_path):
    """`train.py --arch stride`: stride-2 convolutions instead of pools, so fan-in is the
    kernel's; it exports, converts and evaluates (a short training run)."""
    out = tmp_path / "d"
    subprocess.run([sys.executable, str(ROOT / "examples/digits/train.py"), "--out", str(out),
                    "--arch", "stride", "--epochs", "3"], check=True, capture_output=True, timeout=300)
    ops = [n.op_type for n in onnx.load(str(out / "digits_cnn.onnx")).graph.node]
    assert ops.count("Conv") == 3 and "AveragePool" not in ops
    r = run("convert", str(out / "digits_cnn.onnx"), "--calib", str(out / "calib.npz"), "-T", "8",
            "-o", str(tmp_path / "snn"))
    assert r.returncode == 0, r.stderr
    res = json.loads(run("evaluate", str(tmp_path / "snn"), "--data", str(out / "test.npz"), "--json").stdout)
    fanin = {row["name"]: row["max_fanin"] for row in res["layers"]}
    assert sorted(fanin.values()) == [9, 64, 128, 144, 288]  # kernels and rows, no pools


@pytest.mark.parametrize("quiet", [True, False])
def test_an_interrupt_exits_without_finalizer_noise(quiet):
    """After an interrupt, objects cut short in their making (a JIT compile interrupted, in
    llvmlite) may fail in their finalizers as the process ends: the CLI's exit says its one
    line and no "Exception ignored" traceback (without it, the traceback shows: the check
    can tell)."""
    code = f"""
import sys
from snncompile.app import cli

class HalfMade:
    def __del__(self):
        raise AttributeError("_as_parameter_")

kept = [HalfMade()]
try:
    raise KeyboardInterrupt
except KeyboardInterrupt:
    if {quiet}:
        cli._exit_interrupted("interrupted: say what to do")
    print("interrupted: say what to do", file=sys.stderr)
    sys.exit(cli.EXIT_INTERRUPTED)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 130
    if quiet:
        assert r.stderr == "interrupted: say what to do\n"
    else:
        assert "Traceback" in r.stderr and "_as_parameter_" in r.stderr


def test_the_program_ends_without_interpreter_teardown():
    """Once a command's work is done, the program exits without the interpreter's teardown
    (where torch's leftovers, such as a torchrun job's gloo threads, can abort a finished
    process), its buffered output flushed; a caller running the CLI in-process gets SystemExit."""
    code = """
import sys
from snncompile.app import cli
from snncompile.app.cli import main  # __main__.main is the CLI: this process is the program

class Teardown:
    def __del__(self):
        sys.stderr.write("teardown ran\\n")

kept = Teardown()
print("wrote out")  # a pipe: block-buffered until flushed
cli._end_process(5)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert (r.returncode, r.stdout, r.stderr) == (5, "wrote out\n", "")
    from snncompile.app import cli
    with pytest.raises(SystemExit) as e:
        cli._end_process(3)
    assert e.value.code == 3
