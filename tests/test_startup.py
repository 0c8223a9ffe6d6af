"""Commands that need neither torch nor Lava do not import them: `--help`, `backends`,
`inspect` (of a model or a build) and `check` start in a fraction of a second (the timings
are in bench/bench_startup.py; what is asserted here is which modules got imported)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

HEAVY = ("torch", "lava")

# Runs the CLI in-process (as `snncompile ARGS` would) and reports the heavy modules imported.
PROBE = """
import json, sys
from snncompile.app.cli import main
try:
    main(sys.argv[1:], prog_name="snncompile")
except SystemExit as e:
    code = e.code
else:
    code = 0
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(HEAVY))
print("PROBE " + json.dumps({"code": code, "heavy": heavy}), file=sys.stderr)
"""


def probe(*args: str) -> dict:
    r = subprocess.run([sys.executable, "-c", PROBE.replace("HEAVY", repr(HEAVY)), *args],
                       capture_output=True, text=True, timeout=120)
    line = [ln for ln in r.stderr.splitlines() if ln.startswith("PROBE ")]
    assert line, r.stderr
    return json.loads(line[-1][len("PROBE "):])


def _model(nodes, inits, in_shape):
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", *in_shape])
    g = helper.make_graph(nodes, "tiny", [x], [onnx.ValueInfoProto(name="y")],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return onnx.shape_inference.infer_shapes(m)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A dense-ReLU-dense model and its build for the loihi target."""
    d = tmp_path_factory.mktemp("startup")
    rng = np.random.default_rng(0)
    H = helper.make_node
    m = _model([H("Flatten", ["x"], ["f"]), H("Gemm", ["f", "W1", "b1"], ["h"], transB=1),
                       H("Relu", ["h"], ["r"]), H("Gemm", ["r", "W2", "b2"], ["y"], transB=1)],
                      {"W1": rng.normal(0, .3, (8, 12)).astype(np.float32),
                       "b1": np.zeros(8, np.float32),
                       "W2": rng.normal(0, .3, (3, 8)).astype(np.float32),
                       "b2": np.zeros(3, np.float32)}, in_shape=(12,))
    onnx.save(m, str(d / "m.onnx"))
    r = subprocess.run([sys.executable, "-m", "snncompile", "convert", str(d / "m.onnx"), "-o",
                        str(d / "out"), "--target", "loihi", "--bits", "8", "-T", "4",
                        "--membrane-bits", "18", "--input-mode", "every_step"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return d


def test_help_imports_no_torch():
    for args in (["--help"], ["convert", "--help"], ["--version"]):
        res = probe(*args)
        assert res == {"code": 0, "heavy": []}, (args, res)


def test_backends_inspect_and_check_import_no_torch_or_lava(tiny):
    for args in (["backends"], ["inspect", str(tiny / "m.onnx")], ["inspect", str(tiny / "out")],
                 ["check", str(tiny / "out")]):
        res = probe(*args)
        assert res == {"code": 0, "heavy": []}, (args, res)
