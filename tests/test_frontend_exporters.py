"""Models written by real exporters: torch legacy and dynamo, skl2onnx MLPs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

from snncompile import ir
from snncompile.sim.ann import ann_forward
from snncompile.errors import UnsupportedOpError
from snncompile.frontend import import_onnx, load_onnx


class PoolNet(nn.Module):
    """conv-bn-relu-avgpool-conv-relu-maxpool-flatten-linear-relu-linear."""

    def __init__(self):
        super().__init__()
        self.c1, self.bn = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.p1, self.c2, self.p2 = nn.AvgPool2d(2), nn.Conv2d(4, 8, 3, padding=1), nn.MaxPool2d(2)
        self.f1, self.f2 = nn.Linear(8 * 2 * 2, 16), nn.Linear(16, 10)

    def forward(self, x):
        x = self.p1(torch.relu(self.bn(self.c1(x))))
        x = torch.flatten(self.p2(torch.relu(self.c2(x))), 1)
        return self.f2(torch.relu(self.f1(x)))


class ViewNet(nn.Module):
    """Stride-2 conv, BN, ReLU6, conv -> maxpool -> relu (swapped), x.view(x.size(0), -1)."""

    def __init__(self):
        super().__init__()
        self.c1, self.bn = nn.Conv2d(1, 6, 3, stride=2, padding=1), nn.BatchNorm2d(6)
        self.c2, self.p = nn.Conv2d(6, 8, 3, padding=1), nn.MaxPool2d(2)
        self.fc = nn.Linear(8 * 2 * 2, 10)

    def forward(self, x):
        x = torch.relu(self.p(self.c2(nn.functional.relu6(self.bn(self.c1(x))))))
        return self.fc(x.view(x.size(0), -1))


def _trained(cls):
    torch.manual_seed(0)
    m = cls()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        m.bn.running_mean.uniform_(-0.5, 0.5)
        m.bn.running_var.uniform_(0.5, 2.0)
        m.bn.weight.uniform_(0.5, 1.5)
        m.bn.bias.uniform_(-0.2, 0.2)
    return m.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """{(net name, exporter): (torch model, onnx path)}; each export done once."""
    d = tmp_path_factory.mktemp("export")
    x = torch.randn(2, 1, 8, 8)
    out = {}
    for cls in (PoolNet, ViewNet):
        model = _trained(cls)
        name = cls.__name__
        legacy = d / f"{name}_legacy.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x,), str(legacy), dynamo=False, input_names=["x"],
                              output_names=["logits"], dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}},
                              do_constant_folding=(cls is ViewNet))
            dyn = d / f"{name}_dynamo.onnx"
            torch.onnx.export(model, (x,), str(dyn), dynamo=True, external_data=True,
                              dynamic_shapes=({0: torch.export.Dim("n")},), verbose=False)
        out[name, "legacy"] = (model, legacy)
        out[name, "dynamo"] = (model, dyn)
    return out


@pytest.mark.parametrize("net", ["PoolNet", "ViewNet"])
@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_torch_exports(exported, onnx_kit, net, exporter):
    model, path = exported[net, exporter]
    if exporter == "dynamo":
        assert path.with_name(path.name + ".data").is_file()  # weights kept beside the model
    res = import_onnx(path)
    g = res.graph
    assert not any(isinstance(n, (ir.AffineNode, ir.IFNode)) for n in g)  # BN folded
    assert sum(isinstance(n, ir.ReluNode) for n in g) == (3 if net == "PoolNet" else 2)
    assert len(res.warnings) == 1 and "MaxPool" in res.warnings[0]
    x = np.random.default_rng(1).normal(size=(5, 1, 8, 8)).astype(np.float32)
    y = ann_forward(g, x).numpy()
    with torch.no_grad():
        np.testing.assert_allclose(y, model(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-5)
    onnx_model = load_onnx(path)
    np.testing.assert_allclose(y, onnx_kit.run_ort(onnx_model, x, res.output_name), rtol=1e-5, atol=1e-5)
    for relu in (n for n in g if isinstance(n, ir.ReluNode)):  # calibration tensors exist
        t = onnx_kit.run_ort(onnx_model, x, relu.calib_tensor)
        ref = np.clip(t, 0, relu.max_value if relu.max_value is not None else None)
        got = ann_forward(g, x, return_all=True)[relu.name].numpy()
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    if net == "ViewNet":
        pool = next(n for n in g if isinstance(n, ir.MaxPool2dNode))
        assert isinstance(g[pool.inputs[0]], ir.ReluNode)  # maxpool -> relu was swapped


def test_legacy_export_keeps_batchnorm_node(exported):
    _, path = exported["PoolNet", "legacy"]
    assert "BatchNormalization" in {n.op_type for n in load_onnx(path).graph.node}


# -- skl2onnx -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype(np.float32), y


def _fit(est, x, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return est.fit(x, y)


def _to_onnx(est, n_features, options=None):
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    return to_onnx(est, initial_types=[("input", FloatTensorType([None, n_features]))],
                   options=options, target_opset=17)


@pytest.mark.parametrize("options", [None, {"zipmap": False}])
def test_sklearn_mlp_classifier(digits, onnx_kit, options):
    from sklearn.neural_network import MLPClassifier

    x, y = digits
    clf = _fit(MLPClassifier(hidden_layer_sizes=(24,), max_iter=30, random_state=0), x[:600], y[:600])
    m = _to_onnx(clf, 64, {id(clf): options} if options else None)
    res = onnx_kit.check(m, x[600:700])
    assert [n.op for n in res.graph.nodes] == ["input", "dense", "relu", "dense"]
    assert res.graph.meta["onnx_graph_output"] in ("probabilities", "output_probability")
    logits = ann_forward(res.graph, x[600:700])
    np.testing.assert_allclose(torch.softmax(logits, 1).numpy(), clf.predict_proba(x[600:700]),
                               rtol=1e-4, atol=1e-5)
    assert np.array_equal(logits.argmax(1).numpy(), clf.predict(x[600:700]))


def test_sklearn_mlp_regressor(digits, onnx_kit):
    from sklearn.neural_network import MLPRegressor

    x, y = digits
    reg = _fit(MLPRegressor(hidden_layer_sizes=(16,), max_iter=30, random_state=0), x[:600],
               y[:600].astype(np.float32))
    res = onnx_kit.check(_to_onnx(reg, 64), x[600:700])
    np.testing.assert_allclose(ann_forward(res.graph, x[600:700]).numpy().ravel(),
                               reg.predict(x[600:700]), rtol=1e-4, atol=1e-4)


def test_sklearn_binary_classifier_needs_output_choice(digits, onnx_kit):
    """Binary MLPs end in Sigmoid -> [1 - p, p]: an error that says which --output to pass."""
    from sklearn.neural_network import MLPClassifier

    x, y = digits
    clf = _fit(MLPClassifier(hidden_layer_sizes=(8,), max_iter=30, random_state=0), x[:400],
               (y[:400] > 4).astype(int))
    m = _to_onnx(clf, 64, {id(clf): {"zipmap": False}})
    with pytest.raises(UnsupportedOpError) as info:
        import_onnx(m)
    sigmoid = next(n for n in m.graph.node if n.op_type == "Sigmoid")
    assert "(Sigmoid) is not supported" in str(info.value)
    assert f"--output '{sigmoid.input[0]}'" in str(info.value)
    res = onnx_kit.check(m, x[400:500], output=sigmoid.input[0])
    logit = ann_forward(res.graph, x[400:500]).numpy().ravel()
    assert np.array_equal((logit > 0).astype(int), clf.predict(x[400:500]))


# -- model-zoo graphs shipped with the onnx package (fake constant weights, real sizes) ------
@pytest.mark.parametrize("name, ops", [
    ("resnet50", {"conv2d": 53, "add": 16, "dense": 1, "maxpool2d": 1}),  # residuals, BN folded
    ("squeezenet", {"concat": 8, "conv2d": 26}),
])
def test_onnx_zoo_models(onnx_kit, name, ops):
    from collections import Counter
    from pathlib import Path

    import onnx

    path = Path(onnx.__file__).parent / "backend/test/data/light" / f"light_{name}.onnx"
    res = import_onnx(path)
    counts = Counter(n.op for n in res.graph.nodes)
    assert {k: counts[k] for k in ops} == ops and counts["affine"] == 0
    x = np.random.default_rng(0).normal(size=(1, *res.graph.input.shape)).astype(np.float32)
    y = ann_forward(res.graph, x).numpy()
    ref = onnx_kit.run_ort(load_onnx(path), x, res.output_name, res.input_name).reshape(y.shape)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_onnx_zoo_alexnet_reports_lrn():
    from pathlib import Path

    import onnx

    path = Path(onnx.__file__).parent / "backend/test/data/light/light_bvlc_alexnet.onnx"
    with pytest.raises(UnsupportedOpError) as info:
        import_onnx(path)
    assert len(info.value.problems) == 2 and all("(LRN)" in p for p in info.value.problems)
    assert "light_bvlc_alexnet.onnx" in str(info.value)
