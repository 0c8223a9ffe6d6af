"""Spiking relays after average pools under a fan-in limit (snncompile.frontend.relay)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import helper

from snncompile.frontend.relay import relay_pools
from snncompile.ir import DenseNode
from snncompile.ir.serialize import load_graph


def _gap_head(onnx_kit, rng, act: str = "Relu"):
    """conv 3x3 (8 channels) -> act -> global average pool over 6x6 -> flatten -> dense 10."""
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1])]
    nodes += [helper.make_node(act, ["c"], ["r"])] if act else [helper.make_node("Identity", ["c"], ["r"])]
    nodes += [helper.make_node("GlobalAveragePool", ["r"], ["p"]),
              helper.make_node("Flatten", ["p"], ["f"]),
              helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], transB=1)]
    inits = {"w": rng.normal(0, 0.3, (8, 2, 3, 3)).astype(np.float32),
             "b": rng.normal(0, 0.1, 8).astype(np.float32),
             "fw": rng.normal(0, 0.3, (10, 8)).astype(np.float32),
             "fb": np.zeros(10, np.float32)}
    return onnx_kit.model(nodes, inits, in_shape=(2, 6, 6))


def test_a_relay_follows_a_pool_whose_window_the_limit_would_cut(onnx_kit, rng):
    """The dense layer after a 6x6 global pool reads 36 x 8 = 288 inputs through it: under
    --fanin 64 a ReLU is added after the pool, which takes over the pool's tensor name, and the
    model computes the same outputs; under --fanin 288 nothing changes."""
    m = _gap_head(onnx_kit, rng)
    x = rng.normal(0, 1, (5, 2, 6, 6)).astype(np.float32)
    out, pools = relay_pools(m, 64)
    assert pools == ["p"]
    relu = [n for n in out.graph.node if n.op_type == "Relu" and n.output[0] == "p"]
    assert len(relu) == 1 and relu[0].input[0] == "p_pooled"
    onnx.checker.check_model(out)
    np.testing.assert_allclose(onnx_kit.run_ort(out, x), onnx_kit.run_ort(m, x), rtol=1e-6, atol=1e-6)
    same, none = relay_pools(m, 288)
    assert none == [] and same is m


@pytest.mark.parametrize("act", ["", "Sigmoid"])
def test_no_relay_where_the_pool_may_read_negative_values(onnx_kit, rng, act):
    """A ReLU after a pool equals the pool only for non-negative inputs: a pool of a conv's
    raw output (or any other activation) gets none."""
    m = _gap_head(onnx_kit, rng, act)
    assert relay_pools(m, 8)[1] == []


def test_convert_under_a_fanin_limit_keeps_every_channel_after_the_pool(onnx_kit, rng, tmp_path):
    """`convert --fanin 64`: the relay is said, recorded in compile.json, and the classifier
    keeps all 8 pooled channels per output (through the pool it could keep only one)."""
    m = _gap_head(onnx_kit, rng)
    onnx.save(m, tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", x=rng.uniform(0, 1, (64, 2, 6, 6)).astype(np.float32))
    r = subprocess.run([sys.executable, "-m", "snncompile", "convert", str(tmp_path / "m.onnx"), "--calib",
                        str(tmp_path / "calib.npz"), "--bits", "8", "--fanin", "64", "-T", "8",
                        "-o", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "spiking neurons added after 1 global average pool(s) (p)" in r.stderr
    info = json.loads((tmp_path / "out" / "compile.json").read_text())
    assert [rw["pass"] for rw in info["rewrites"]] == ["relay_pools"]
    g = load_graph(tmp_path / "out")
    dense = [n for n in g.nodes if isinstance(n, DenseNode)]
    assert len(dense) == 1 and (np.asarray(dense[0].weight) != 0).sum(axis=1).min() == 8
