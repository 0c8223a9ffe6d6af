"""Exporter sweep: the networks users bring, exported every common way, through the frontend.

Builds torchvision-shaped networks with torch.nn (random weights, non-trivial BatchNorm
running statistics; torchvision is not a dependency): ResNet basic and bottleneck blocks with
identity and projection shortcuts, a MobileNet-V1 (depthwise separable, ReLU6), VGGs with max
pooling (with and without BN, dropout, AdaptiveAvgPool before the classifier) and an MLP, plus
skl2onnx MLPClassifiers. Each is exported by torch's legacy exporter (several opsets, with and
without constant folding, training=PRESERVE, dynamic batch) and by the dynamo exporter, and
every file is

  1. imported (``import_onnx``) and its ANN compared with onnxruntime on random inputs
     (``--stage import``, seconds per model), then
  2. given to the CLI exactly as a user types it (``--stage cli``): ``inspect model.onnx
     --target T``, ``convert model.onnx --target T --bits 8 --fanin 64`` (as typed, no -o;
     with ``--calib``, its own -o), ``run`` on three inputs, ``check``.

Every outcome is one row of a table (printed, and written as JSON with ``--json``)::

    python bench/exporter_sweep.py --out /tmp/sweep --stage import
    python bench/exporter_sweep.py --out /tmp/sweep --stage cli --models resnet18_c10 \
        --exports legacy17 dynamo --targets loihi nir

A row is "ok" only when the command exits 0 (and ``run`` reports bit_exact) or refuses with a
one-line error of our own (exit 2-7, no traceback).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

# -- models ---------------------------------------------------------------------------------


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c)


class Basic(nn.Module):
    """torchvision BasicBlock: conv-bn-relu-conv-bn + (identity | 1x1 conv-bn), relu."""

    expansion = 1

    def __init__(self, cin: int, c: int, stride: int = 1):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, c, 3, stride, 1, bias=False), _bn(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, 1, 1, bias=False), _bn(c)
        self.relu = nn.ReLU(inplace=True)
        self.down = None
        if stride != 1 or cin != c:
            self.down = nn.Sequential(nn.Conv2d(cin, c, 1, stride, bias=False), _bn(c))

    def forward(self, x):
        idt = x if self.down is None else self.down(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + idt)


class Bottleneck(nn.Module):
    """torchvision Bottleneck (stride on the 3x3, V1.5)."""

    expansion = 4

    def __init__(self, cin: int, c: int, stride: int = 1):
        super().__init__()
        out = c * 4
        self.conv1, self.bn1 = nn.Conv2d(cin, c, 1, bias=False), _bn(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, stride, 1, bias=False), _bn(c)
        self.conv3, self.bn3 = nn.Conv2d(c, out, 1, bias=False), _bn(out)
        self.relu = nn.ReLU(inplace=True)
        self.down = None
        if stride != 1 or cin != out:
            self.down = nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False), _bn(out))

    def forward(self, x):
        idt = x if self.down is None else self.down(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + idt)


class ResNet(nn.Module):
    """torchvision ResNet layout; ``cifar`` uses the 3x3 stem without max pool."""

    def __init__(self, block, layers, width: int = 64, cin: int = 3, classes: int = 10,
                 cifar: bool = True):
        super().__init__()
        if cifar:
            self.stem = nn.Sequential(nn.Conv2d(cin, width, 3, 1, 1, bias=False), _bn(width),
                                      nn.ReLU(inplace=True))
        else:
            self.stem = nn.Sequential(nn.Conv2d(cin, width, 7, 2, 3, bias=False), _bn(width),
                                      nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        blocks, c_in = [], width
        for i, n in enumerate(layers):
            c = width * 2 ** i
            for j in range(n):
                blocks.append(block(c_in, c, 2 if (i > 0 and j == 0) else 1))
                c_in = c * block.expansion
        self.layers = nn.Sequential(*blocks)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(c_in, classes)

    def forward(self, x):
        x = self.avgpool(self.layers(self.stem(x)))
        return self.fc(torch.flatten(x, 1))


def _dw(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), _bn(cin), nn.ReLU6(inplace=True),
            nn.Conv2d(cin, cout, 1, bias=False), _bn(cout), nn.ReLU6(inplace=True)]


class MobileNetV1(nn.Module):
    """MobileNet-V1: conv stem then depthwise-separable blocks, ReLU6, global pool, dropout, fc."""

    def __init__(self, plan, cin: int = 3, classes: int = 10, stem_stride: int = 1):
        super().__init__()
        c = plan[0][0]
        mods = [nn.Conv2d(cin, c, 3, stem_stride, 1, bias=False), _bn(c), nn.ReLU6(inplace=True)]
        for cout, s in plan[1:]:
            mods += _dw(c, cout, s)
            c = cout
        self.features = nn.Sequential(*mods)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(c, classes))

    def forward(self, x):
        x = self.pool(self.features(x))
        return self.classifier(x.view(x.size(0), -1))


class VGG(nn.Module):
    """torchvision VGG: features (conv[-bn]-relu, 'M' max pool), AdaptiveAvgPool, classifier
    Linear-ReLU-Dropout-Linear-ReLU-Dropout-Linear."""

    def __init__(self, cfg, bn: bool, cin: int = 3, classes: int = 10, pool: int = 7,
                 hidden: int = 4096):
        super().__init__()
        mods, c = [], cin
        for v in cfg:
            if v == "M":
                mods.append(nn.MaxPool2d(2, 2))
            else:
                mods += [nn.Conv2d(c, v, 3, padding=1)] + ([_bn(v)] if bn else []) + [nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*mods)
        self.avgpool = nn.AdaptiveAvgPool2d((pool, pool))
        self.classifier = nn.Sequential(
            nn.Linear(c * pool * pool, hidden), nn.ReLU(True), nn.Dropout(),
            nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(), nn.Linear(hidden, classes))

    def forward(self, x):
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


class MLP(nn.Module):
    def __init__(self, n_in: int, hidden=(256, 128), classes: int = 10):
        super().__init__()
        mods, c = [nn.Flatten()], n_in
        for h in hidden:
            mods += [nn.Linear(c, h), nn.ReLU(), nn.Dropout(0.1)]
            c = h
        mods.append(nn.Linear(c, classes))
        self.net = nn.Sequential(*mods)

    def forward(self, x):
        return self.net(x)


VGG11 = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]
VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
_MBV1 = [(32, 1), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 \
    + [(1024, 2), (1024, 1)]


def _half(cfg):
    return [v if v == "M" else max(8, v // 8) for v in cfg]


# name -> (constructor, per-sample input shape); small widths keep the CLI stage minutes long
MODELS = {
    "resnet_basic_c10": (lambda: ResNet(Basic, [1, 1, 1], width=16), (3, 32, 32)),
    "resnet_bottleneck_c10": (lambda: ResNet(Bottleneck, [1, 1], width=8), (3, 32, 32)),
    "resnet_basic_m28": (lambda: ResNet(Basic, [1, 1], width=8, cin=1), (1, 28, 28)),
    "mobilenet_v1_c10": (lambda: MobileNetV1([(16, 1), (32, 1), (64, 2), (64, 1), (128, 2)]),
                         (3, 32, 32)),
    "vgg_bn_c10": (lambda: VGG([16, "M", 32, "M", 64, "M", 64, "M"], bn=True, pool=1, hidden=64),
                   (3, 32, 32)),
    "vgg_c10_pool2": (lambda: VGG([16, "M", 32, "M", 64, 64, "M"], bn=False, pool=2, hidden=64),
                      (3, 32, 32)),
    "vgg_m28_pool7": (lambda: VGG([8, "M", 16, "M"], bn=True, cin=1, pool=7, hidden=32), (1, 28, 28)),
    "mlp_m28": (lambda: MLP(784), (1, 28, 28)),
    # ImageNet size (random weights, torchvision widths); few runs, under ulimit -v
    "resnet18_224": (lambda: ResNet(Basic, [2, 2, 2, 2], classes=1000, cifar=False), (3, 224, 224)),
    "resnet50_224": (lambda: ResNet(Bottleneck, [3, 4, 6, 3], classes=1000, cifar=False), (3, 224, 224)),
    "vgg11_224": (lambda: VGG(VGG11, bn=False, classes=1000), (3, 224, 224)),
    "vgg16_bn_224": (lambda: VGG(VGG16, bn=True, classes=1000), (3, 224, 224)),
    "mobilenet_v1_224": (lambda: MobileNetV1(_MBV1, classes=1000, stem_stride=2), (3, 224, 224)),
}


class Odd(nn.Module):
    """A small CNN around one construct users' exports contain: ``mid`` after the first conv,
    ``tail`` on the logits."""

    def __init__(self, mid: nn.Module | None = None, tail=None, cin: int = 3, flat: str = "flatten"):
        super().__init__()
        self.c1, self.bn = nn.Conv2d(cin, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.mid = mid or nn.ReLU()
        self.c2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8 if flat.startswith("mean") else 8 * 4 * 4, 10)
        self.tail, self.flat = tail, flat

    def forward(self, x):
        x = torch.relu(self.c2(self.mid(self.bn(self.c1(x)))))
        if x.shape[-1] != 4:
            x = nn.functional.adaptive_avg_pool2d(x, 4)
        if self.flat == "flatten":
            x = torch.flatten(x, 1)
        elif self.flat == "reshape":
            x = x.reshape(x.shape[0], -1)
        elif self.flat == "mean":
            x = x.mean((2, 3))
        elif self.flat == "mean_keepdim":
            x = x.mean((2, 3), keepdim=True).view(x.size(0), -1)
        elif self.flat == "reshape-1":
            x = x.reshape(-1, 8 * 4 * 4)
        x = self.fc(x)
        return x if self.tail is None else self.tail(x)


class Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class MatMulLinear(nn.Module):
    """x @ W.T + b written out (MatMul + Add, a Transpose of the weight)."""

    def __init__(self):
        super().__init__()
        self.w1, self.b1 = nn.Parameter(torch.randn(32, 48) * 0.2), nn.Parameter(torch.randn(32) * 0.1)
        self.w2 = nn.Parameter(torch.randn(48, 10) * 0.2)

    def forward(self, x):
        h = torch.relu(torch.flatten(x, 1) @ self.w1.t() + self.b1)
        return torch.matmul(h, self.w2[:32])


_F = nn.functional
ODD = {
    "relu6": lambda: Odd(nn.ReLU6()),
    "hardtanh06": lambda: Odd(nn.Hardtanh(0.0, 6.0)),
    "clamp_min_max": lambda: Odd(Lambda(lambda x: torch.clamp(x, min=0.0, max=6.0))),
    "minimum_maximum": lambda: Odd(Lambda(lambda x: torch.minimum(torch.relu(x), torch.tensor(6.0)))),
    "clamp_min": lambda: Odd(Lambda(lambda x: x.clamp_min(0.0))),
    "avgpool_pad_incl": lambda: Odd(nn.Sequential(nn.ReLU(), nn.AvgPool2d(3, 1, 1))),
    "avgpool_pad_excl": lambda: Odd(nn.Sequential(nn.ReLU(), nn.AvgPool2d(3, 1, 1, count_include_pad=False))),
    "avgpool_ceil": lambda: Odd(nn.Sequential(nn.ReLU(), nn.AvgPool2d(3, 2, ceil_mode=True))),
    "maxpool_ceil": lambda: Odd(nn.Sequential(nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True))),
    "zeropad": lambda: Odd(nn.Sequential(nn.ReLU(), nn.ZeroPad2d((1, 1, 1, 1)), nn.Conv2d(8, 8, 3))),
    "mean23": lambda: Odd(flat="mean"),
    "mean23_keepdim": lambda: Odd(flat="mean_keepdim"),
    "reshape_shape": lambda: Odd(flat="reshape"),
    "reshape_minus1": lambda: Odd(flat="reshape-1"),
    "softmax_tail": lambda: Odd(tail=nn.Softmax(1)),
    "logsoftmax_tail": lambda: Odd(tail=nn.LogSoftmax(1)),
    "dropout_mid": lambda: Odd(nn.Sequential(nn.ReLU(), nn.Dropout2d(0.3))),
    "adaptive_upsample": lambda: Odd(nn.Sequential(nn.ReLU(), nn.MaxPool2d(8), nn.AdaptiveAvgPool2d(8))),
    "sigmoid": lambda: Odd(nn.Sigmoid()),
    "hardswish": lambda: Odd(nn.Hardswish()),
    "silu": lambda: Odd(nn.SiLU()),
    "leakyrelu": lambda: Odd(nn.LeakyReLU(0.1)),
    "matmul_linear": MatMulLinear,
}
_ODD_SHAPE = {"matmul_linear": (3, 4, 4)}


def build(name: str, seed: int = 0) -> nn.Module:
    """The model with random weights and non-trivial BatchNorm running statistics, eval()."""
    torch.manual_seed(seed)
    m = MODELS[name][0]() if name in MODELS else ODD[name]()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.3, 0.3)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.1, 0.2)
    return m.eval()


# -- exports --------------------------------------------------------------------------------

# name -> torch.onnx.export keyword arguments
EXPORTS = {
    "legacy13": dict(dynamo=False, opset_version=13),
    "legacy17": dict(dynamo=False, opset_version=17),
    "legacy17_dynbatch": dict(dynamo=False, opset_version=17, dynamic=True),
    "legacy17_nofold": dict(dynamo=False, opset_version=17, do_constant_folding=False),
    "legacy17_preserve": dict(dynamo=False, opset_version=17, training="preserve"),
    "legacy11": dict(dynamo=False, opset_version=11),
    "legacy9": dict(dynamo=False, opset_version=9),
    "legacy7": dict(dynamo=False, opset_version=7),
    "legacy17_initinputs": dict(dynamo=False, opset_version=17, keep_initializers_as_inputs=True),
    "legacy17_training": dict(dynamo=False, opset_version=17, training="train"),
    "legacy17_fp64": dict(dynamo=False, opset_version=17, dtype=torch.float64),
    "legacy17_fp16": dict(dynamo=False, opset_version=17, dtype=torch.float16),
    "dynamo": dict(dynamo=True),
    "dynamo_dynbatch": dict(dynamo=True, dynamic=True),
    "dynamo_opset18_nofold": dict(dynamo=True, opset_version=18, optimize=False),
}


def export(model: nn.Module, shape, path: Path, how: str) -> Path:
    kw = dict(EXPORTS[how])
    dynamic = kw.pop("dynamic", False)
    training = kw.pop("training", None)
    if training:
        kw["training"] = {"preserve": torch.onnx.TrainingMode.PRESERVE,
                          "train": torch.onnx.TrainingMode.TRAINING}[training]
    dtype = kw.pop("dtype", torch.float32)
    x = torch.randn(2, *shape, dtype=dtype)
    if dtype != torch.float32:
        import copy
        model = copy.deepcopy(model).to(dtype)
    names = dict(input_names=["input"], output_names=["logits"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kw["dynamo"]:
            if dynamic:
                kw["dynamic_shapes"] = ({0: torch.export.Dim("batch")},)
            torch.onnx.export(model, (x,), str(path), external_data=True, verbose=False, **names, **kw)
        else:
            if dynamic:
                kw["dynamic_axes"] = {"input": {0: "batch"}, "logits": {0: "batch"}}
            torch.onnx.export(model, (x,), str(path), **names, **kw)
    return path


def sklearn_models(out: Path) -> dict[str, Path]:
    """skl2onnx MLPClassifiers (relu) on digits: with ZipMap, without, and a regressor."""
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    paths = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = MLPClassifier(hidden_layer_sizes=(32, 16), max_iter=60, random_state=0).fit(x, y)
        reg = MLPRegressor(hidden_layer_sizes=(32,), max_iter=60, random_state=0).fit(x, y.astype(np.float32))
    for name, est, opts, opset in (("sk_mlp_zipmap", clf, None, 17),
                                   ("sk_mlp_nozipmap", clf, {"zipmap": False}, 17),
                                   ("sk_mlp_opset12", clf, None, 12), ("sk_mlp_regressor", reg, None, 17)):
        m = to_onnx(est, initial_types=[("input", FloatTensorType([None, 64]))], options=opts,
                    target_opset=opset)
        p = out / f"{name}.onnx"
        p.write_bytes(m.SerializeToString())
        paths[name] = p
    np.savez(out / "sk_calib.npz", x=x[:256], y=y[:256])
    return paths


# -- stages ---------------------------------------------------------------------------------


def import_stage(path: Path, shape, n: int = 4) -> dict:
    """Import, ANN forward and onnxruntime on the same random inputs."""
    import onnxruntime as ort
    from snncompile.errors import SnnCompileError
    from snncompile.frontend import import_onnx
    from snncompile.sim.ann import ann_forward

    t0 = time.time()
    try:
        res = import_onnx(path)
    except SnnCompileError as e:
        return {"outcome": "refused", "message": str(e).splitlines()[0][:300]}
    except Exception as e:  # noqa: BLE001  (the sweep records what users would see)
        return {"outcome": "CRASH", "message": f"{type(e).__name__}: {e}"[:300]}
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(n, *shape)).astype(np.float32)
    y = ann_forward(res.graph, x).numpy()
    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001  (onnxruntime lacks e.g. a float64 Conv)
        return {"outcome": "imported", "message": f"onnxruntime cannot run it: {str(e)[:120]}"}
    iname = sess.get_inputs()[0].name
    fixed = sess.get_inputs()[0].shape[0]
    feed = x if not isinstance(fixed, int) else x[:fixed]
    feed = feed.astype({"tensor(double)": np.float64, "tensor(float16)": np.float16}.get(
        sess.get_inputs()[0].type, np.float32))
    try:
        outs = sess.run(None, {iname: feed})
    except Exception as e:  # noqa: BLE001  (onnxruntime lacks e.g. a float64 Conv)
        return {"outcome": "imported", "message": f"onnxruntime cannot run it: {str(e)[:120]}"}
    if isinstance(outs[-1], list):  # skl2onnx ZipMap: a list of {class: probability}
        outs[-1] = np.array([[d[k] for k in sorted(d)] for d in outs[-1]], np.float32)
    ref = [o for o in outs if isinstance(o, np.ndarray) and o.dtype.kind == "f"]
    got = y[:len(feed)].reshape(len(feed), -1)
    ref = [r.astype(np.float64) for r in ref]
    # the compiled tensor is the logits before a stripped Softmax: compare those or their softmax
    e = np.exp(got - got.max(1, keepdims=True))
    sm = e / e.sum(1, keepdims=True)
    cands = [got, sm, np.log(sm)]
    errs = [float(np.max(np.abs(r.reshape(c.shape) - c)) / (np.max(np.abs(r)) + 1e-12))
            for r in ref for c in cands if r.size == c.size]
    if not errs:
        return {"outcome": "NO-REF", "message": "no onnxruntime output with the compiled shape"}
    err = min(errs)
    ok = err < (2e-3 if feed.dtype == np.float16 else 1e-4)
    return {"outcome": "ok" if ok else "WRONG", "rel_err": err, "seconds": round(time.time() - t0, 1),
            "warnings": len(res.warnings), "nodes": len(res.graph.nodes)}


def _cli(args: list[str], timeout: int, log: Path) -> dict:
    exe = str(Path(sys.executable).with_name("snncompile"))
    t0 = time.time()
    try:
        p = subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    except subprocess.TimeoutExpired:
        return {"rc": "timeout", "seconds": timeout, "outcome": "TIMEOUT"}
    dt = round(time.time() - t0, 1)
    with open(log, "a") as f:
        f.write(f"$ snncompile {' '.join(args)}\n[rc {p.returncode}, {dt}s]\n{p.stdout}\n{p.stderr}\n")
    err = p.stderr.strip()
    last = err.splitlines()[-1] if err else ""
    if p.returncode == 0:
        outcome = "ok"
    elif "Traceback" in err or p.returncode in (1, 70) or p.returncode < 0:
        outcome = "CRASH"
    else:
        outcome = "refused"
    try:
        bit_exact = json.loads(p.stdout).get("bit_exact") if "--json" in args else None
    except (json.JSONDecodeError, AttributeError):
        bit_exact = None
    return {"rc": p.returncode, "seconds": dt, "outcome": outcome, "message": last[:300],
            "bit_exact": bit_exact}


def cli_stage(path: Path, calib: Path, data: Path, target: str, work: Path, use_calib: bool,
              timeout: int, log: Path) -> dict:
    # as typed: no -o (the default, model.<target>/ beside the model); with --calib, its own -o
    out = path.with_name(f"{path.stem}.{target}")
    args = ["convert", str(path), "--target", target, "--bits", "8", "--fanin", "64"]
    if use_calib:
        work.mkdir(exist_ok=True)
        out = work / f"{path.stem}.{target}.calib"
        args += ["--calib", str(calib), "-o", str(out)]
    row = {"inspect": _cli(["inspect", str(path), "--target", target], timeout, log),
           "convert": _cli(args, timeout, log)}
    if row["convert"]["rc"] == 0:
        r = _cli(["run", str(out), "--data", str(data), "--json", "-q"], timeout, log)
        if r["rc"] == 8 or (r["outcome"] == "ok" and not r["bit_exact"]):
            r["outcome"] = "NOT-EXACT"
        row["run"] = r
        row["check"] = _cli(["check", str(out), "-q"], timeout, log)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--stage", choices=["import", "cli"], default="import")
    ap.add_argument("--models", nargs="*", default=[m for m in MODELS if not m.endswith("_224")])
    ap.add_argument("--exports", nargs="*", default=list(EXPORTS))
    ap.add_argument("--targets", nargs="*", default=["loihi", "cyclesim", "netlist", "nir"])
    ap.add_argument("--odd", action="store_true", help="also the small models of odd constructs")
    ap.add_argument("--sklearn", action="store_true", help="also the skl2onnx MLPs")
    ap.add_argument("--calib", action="store_true", help="cli: also with --calib")
    ap.add_argument("--timeout", type=int, default=900)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("snncompile").setLevel(logging.ERROR)
    a.out.mkdir(parents=True, exist_ok=True)
    files: list[tuple[str, str, Path, tuple]] = []
    for name in a.models + (list(ODD) if a.odd else []):
        shape = MODELS[name][1] if name in MODELS else _ODD_SHAPE.get(name, (3, 16, 16))
        model = build(name)
        for how in a.exports:
            p = a.out / f"{name}__{how}.onnx"
            if not p.exists():
                try:
                    export(model, shape, p, how)
                except Exception as e:  # noqa: BLE001  (an exporter that fails is a row too)
                    print(f"{name:24s} {how:22s} EXPORT FAILED {type(e).__name__}: {str(e)[:150]}")
                    continue
            files.append((name, how, p, shape))
        rng = np.random.default_rng(1)
        np.savez(a.out / f"{name}_calib.npz", x=rng.uniform(-1, 1, (64, *shape)).astype(np.float32))
        np.savez(a.out / f"{name}_data.npz", x=rng.uniform(-1, 1, (3, *shape)).astype(np.float32),
                 y=np.zeros(3, np.int64))
    if a.sklearn:
        for name, p in sklearn_models(a.out).items():
            files.append((name, "skl2onnx", p, (64,)))
    rows = []
    log = a.out / "cli.log"
    for name, how, p, shape in files:
        base = name if how != "skl2onnx" else "sk"
        if how == "skl2onnx" and not (a.out / "sk_data.npz").exists():
            d = np.load(a.out / "sk_calib.npz")
            np.savez(a.out / "sk_data.npz", x=d["x"][:3], y=d["y"][:3])
        if a.stage == "import":
            r = {"model": name, "export": how, **import_stage(p, shape)}
            rows.append(r)
            print(f"{name:24s} {how:22s} {r['outcome']:8s} {r.get('rel_err', float('nan')):.1e} "
                  f"{r.get('message', '')}", flush=True)
            continue
        for target in a.targets:
            for use_calib in ([False, True] if a.calib else [False]):
                r = {"model": name, "export": how, "target": target, "calib": use_calib,
                     **cli_stage(p, a.out / f"{base}_calib.npz", a.out / f"{base}_data.npz", target,
                                 a.out / "builds", use_calib, a.timeout, log)}
                rows.append(r)
                c = r["convert"]
                rr = r.get("run", {})
                print(f"{name:22s} {how:20s} {target:8s} {'calib' if use_calib else '     '} "
                      f"convert {c['outcome']}({c['rc']},{c['seconds']}s) "
                      f"run {rr.get('outcome', '-')}({rr.get('bit_exact', '-')}) "
                      f"check {r.get('check', {}).get('outcome', '-')}({r.get('check', {}).get('rc', '-')}) "
                      f"inspect {r['inspect']['outcome']}({r['inspect']['rc']}) "
                      f"{c['message'] if c['rc'] else ''}", flush=True)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
