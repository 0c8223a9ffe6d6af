"""`convert` keeps one copy of what it needs: the source model is copied from disk into the
artifact (not serialized from memory), the loihi network is built once (the check's network
is the one written), and `inspect --target` predicts --input-bits through convert's own
calibration, so its line is what compile.json records."""

from __future__ import annotations

import gc
import json
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper

import snncompile_loihi.backend as loihi_backend
from snncompile.app.cli import main
from snncompile.targets.api import get_backend
from snncompile.targets.artifact import read_artifact


def cli(*args) -> subprocess.CompletedProcess:
    r = CliRunner().invoke(main, [str(a) for a in args])
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return subprocess.CompletedProcess(args, r.exit_code, r.stdout, r.stderr)


def _cnn(onnx_kit, w_scale: float = 0.4, gamma: float | None = None) -> onnx.ModelProto:
    """x (1x6x6) -> Conv 3x3 (4 ch) [-> BatchNorm (gamma)] -> Relu -> AveragePool 2 -> Flatten
    -> Gemm."""
    rng = np.random.default_rng(3)
    bn = gamma is not None
    inits = {"w1": rng.normal(0, w_scale, (4, 1, 3, 3)).astype(np.float32),
             "b1": rng.normal(0, 0.1, 4).astype(np.float32),
             "w2": rng.normal(0, 0.3, (3, 4 * 3 * 3)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c"], pads=[1, 1, 1, 1])]
    if bn:
        inits.update({"g": np.full(4, gamma, np.float32), "b": np.zeros(4, np.float32),
                      "m": np.zeros(4, np.float32), "v": np.ones(4, np.float32)})
        nodes.append(helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["cn"]))
    nodes += [helper.make_node("Relu", ["cn" if bn else "c"], ["r"]),
              helper.make_node("AveragePool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
              helper.make_node("Flatten", ["p"], ["f"]),
              helper.make_node("Gemm", ["f", "w2"], ["y"], transB=1)]
    return onnx_kit.model(nodes, inits, in_shape=(1, 6, 6))


@pytest.fixture
def cnn_file(onnx_kit, tmp_path) -> Path:
    path = tmp_path / "cnn.onnx"
    onnx.save(_cnn(onnx_kit), path)
    return path


def test_loihi_network_is_built_once_per_convert(cnn_file, tmp_path, monkeypatch):
    built = []
    real = loihi_backend.build_network

    def counting(graph, *args, layers=None, **kwargs):
        if layers is None:  # the whole network (the profile's input rule builds the first layer only)
            built.append(graph.timesteps)
        return real(graph, *args, layers=layers, **kwargs)

    monkeypatch.setattr(loihi_backend, "build_network", counting)
    r = cli("convert", cnn_file, "--target", "loihi", "-T", "8", "--fanin", "8", "-o", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert len(built) == 1 and "--fanin 8 pruned" in r.stderr
    assert (tmp_path / "out" / "loihi" / "network.json").is_file()
    # under --fanin 8 the pool before the dense layer got a relay (36 inputs through it, not
    # 144): the artifact keeps the model with it, which reads back as the ANN baseline
    kept = read_artifact(tmp_path / "out").load_model()
    assert [n.op_type for n in kept.graph.node].count("Relu") == 2
    # without a rewrite the source file is copied as it is
    r = cli("convert", cnn_file, "--target", "loihi", "-T", "8", "-o", tmp_path / "plain")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "plain" / "model.onnx").read_bytes() == cnn_file.read_bytes()
    read_artifact(tmp_path / "plain").load_model()


def test_lowering_builds_again_when_the_checked_graph_changed(cnn_file, tmp_path, monkeypatch):
    assert cli("convert", cnn_file, "--target", "loihi", "-T", "8", "-o", tmp_path / "built").returncode == 0
    g = read_artifact(tmp_path / "built").graph
    built = []
    real = loihi_backend.build_network
    monkeypatch.setattr(loihi_backend, "build_network",
                        lambda graph, *a, **k: built.append(graph.timesteps) or real(graph, *a, **k))
    backend = get_backend("loihi")
    assert backend.check(g) == []
    (tmp_path / "a").mkdir()
    backend.lower(g, tmp_path / "a")
    assert len(built) == 1  # reused
    (tmp_path / "a2").mkdir()
    backend.lower(g, tmp_path / "a2")
    assert len(built) == 2  # a lowering uses the kept network once, then builds
    assert backend.check(g) == []
    g.nodes[-1].bias = g.nodes[-1].bias.copy()  # reassigned: no longer what was checked
    (tmp_path / "b").mkdir()
    backend.lower(g, tmp_path / "b")
    assert len(built) == 4
    first = json.loads((tmp_path / "a" / "network.json").read_text())
    assert first == json.loads((tmp_path / "b" / "network.json").read_text())
    # a check of a graph that is gone keeps nothing alive
    backend.check(read_artifact(tmp_path / "built").graph)
    gc.collect()
    assert backend._checked is None


def test_external_data_model_is_inlined_into_the_artifact(onnx_kit, tmp_path):
    src = tmp_path / "ext" / "cnn.onnx"
    src.parent.mkdir()
    onnx.save(_cnn(onnx_kit), src, save_as_external_data=True, location="cnn.onnx.data", size_threshold=0)
    r = cli("convert", src, "-T", "8", "-o", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    m = read_artifact(tmp_path / "out").load_model()
    assert not any(onnx.external_data_helper.uses_external_data(t) for t in m.graph.initializer)


# weak conv weights and a strong BatchNorm: the BN statistics give the layer a far larger
# scale (so threshold) than the weight bounds, and a narrower input (4 bits, not 7); then the
# same model without BN (synthetic inputs); and one where the two happen to agree
@pytest.mark.parametrize("w_scale, gamma, bits", [(0.01, 100.0, 4), (0.01, None, None), (0.4, 1.0, None)])
def test_inspect_predicts_the_input_bits_convert_records(onnx_kit, tmp_path, w_scale, gamma, bits):
    path = tmp_path / "m.onnx"
    onnx.save(_cnn(onnx_kit, w_scale, gamma), path)
    r = cli("inspect", path, "--target", "loihi", "--json")
    assert r.returncode == 0, r.stderr
    predicted = json.loads(r.stdout)["target"]
    r = cli("convert", path, "--target", "loihi", "-o", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    recorded = json.loads((tmp_path / "out" / "compile.json").read_text())["profile"]
    assert predicted["profile"] == recorded
    if bits is not None:
        assert recorded["chosen"]["input_bits"] == bits
    assert predicted["line"] in r.stdout


def test_a_fanin_every_layer_meets_warns_of_nothing(cnn_file, tmp_path):
    """--fanin above every layer's fan-in prunes nothing: no warning that accuracy will suffer."""
    r = cli("convert", cnn_file, "-T", "8", "--fanin", "4096", "-o", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert "pruned" not in r.stderr and "will suffer" not in r.stderr


def test_pruned_share_one_mask_at_a_time_is_the_same():
    from snncompile.passes.constrain import fanin_masks, iter_fanin_masks, pruned_share
    from snncompile.testing import zoo_case

    g = zoo_case("residual_add").graph
    for k in (2, 5):
        share = pruned_share(g, fanin_masks(g, k))
        assert 0 < share < 1 and pruned_share(g, iter_fanin_masks(g, k)) == share
