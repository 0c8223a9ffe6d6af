"""A layer that the quantizer rounds to all-zero weights is named in a warning, not lost
quietly (a residual branch far weaker than the skip whose add's scale it shares)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from snncompile.app.compile import CompileRequest, compile_model
from snncompile.ir.options import ConversionOptions


def _residual(onnx_kit, branch_gain: float):
    """conv-ReLU (r0), then conv-ReLU-conv (the branch, last conv times ``branch_gain``)
    added to r0, ReLU, dense head."""
    rng = np.random.default_rng(0)
    c = 4
    inits = {"w0": rng.normal(0, 0.5, (c, 3, 1, 1)), "w1": rng.normal(0, 0.5, (c, c, 1, 1)),
             "w2": rng.normal(0, 0.5, (c, c, 1, 1)) * branch_gain, "wd": rng.normal(0, 0.3, (3, c * 16))}
    inits = {k: v.astype(np.float32) for k, v in inits.items()}
    nodes = [helper.make_node("Conv", ["x", "w0"], ["h0"]), helper.make_node("Relu", ["h0"], ["r0"]),
             helper.make_node("Conv", ["r0", "w1"], ["h1"]), helper.make_node("Relu", ["h1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["h2"]), helper.make_node("Add", ["h2", "r0"], ["s"]),
             helper.make_node("Relu", ["s"], ["r2"]), helper.make_node("Flatten", ["r2"], ["f"]),
             helper.make_node("Gemm", ["f", "wd"], ["y"], transB=1)]
    return onnx_kit.model(nodes, inits, in_shape=(3, 4, 4))


def test_a_branch_rounded_to_zero_is_named_in_a_warning(onnx_kit, tmp_path, caplog):
    x = np.random.default_rng(1).uniform(0, 1, (64, 3, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    for gain, zeroed in ((1e-4, True), (1.0, False)):
        onnx.save(_residual(onnx_kit, gain), tmp_path / "m.onnx")
        caplog.clear()
        info = compile_model(CompileRequest(model=str(tmp_path / "m.onnx"), out=str(tmp_path / f"o{gain}"),
                                            calib=str(tmp_path / "calib.npz"), calibrate_bias=False,
                                            options=ConversionOptions(weight_bits=8)))
        hits = [w for w in info["warnings"] if "all-zero weights" in w]
        assert bool(hits) == zeroed
        if zeroed:
            assert "'h2'" in hits[0] and "--bits 8" in hits[0] and "'h1'" not in hits[0]
            assert hits[0] in caplog.text
