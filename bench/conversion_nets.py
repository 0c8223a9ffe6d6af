"""Conversion without tuning on the kinds of network users bring: a digits ResNet with an
identity block, one with a stride-2 projection block, a Fashion-MNIST CNN that downsamples
with stride-2 convolutions, and a MobileNet-style network (depthwise-separable, ReLU6, BN).

``train`` trains the four (seconds to a minute each on one thread; Fashion-MNIST: 12,000
training images of the IDX files, the first 1,000 test images) and writes per network
``model.onnx``, ``calib.npz`` (1,000 held-out training images for Fashion-MNIST, 300 digits)
and ``test.npz``. ``measure`` converts each with the given options (those of ``snncompile
convert``: --input-mode, --norm, --spikes, ... as JSON), with and without the bias
calibration, and prints one JSON line per configuration: ANN and SNN test accuracy at each
T. Calibration runs at the T it is scored at, as ``convert -T T`` does.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python bench/conversion_nets.py train --out /tmp/cnets
    OMP_NUM_THREADS=1 .venv/bin/python bench/conversion_nets.py measure --data /tmp/cnets \\
        --nets resnet_id,stride2 --opts '{"input_mode": "once", "norm": "percentile"}' --calibrate both
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

FASHION = Path("/usr/share/datasets/fashion-mnist")


def _idx(path: Path) -> np.ndarray:
    raw = gzip.open(path, "rb").read()
    nd = raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=nd, offset=4))
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * nd).reshape(shape)


def _fashion():
    xtr, ytr = _idx(FASHION / "train-images-idx3-ubyte.gz"), _idx(FASHION / "train-labels-idx1-ubyte.gz")
    xte, yte = _idx(FASHION / "t10k-images-idx3-ubyte.gz"), _idx(FASHION / "t10k-labels-idx1-ubyte.gz")
    p = np.random.default_rng(0).permutation(len(xtr))
    f = lambda x: (x.astype(np.float32) / 255.0)[:, None]  # noqa: E731
    tr, ca = p[:12000], p[12000:13000]
    return ((f(xtr[tr]), ytr[tr].astype(np.int64)), (f(xtr[ca]), ytr[ca].astype(np.int64)),
            (f(xte[:1000]), yte[:1000].astype(np.int64)))


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = (d.images / 16.0).astype(np.float32)[:, None], d.target.astype(np.int64)
    p = np.random.default_rng(0).permutation(len(x))
    tr, ca, te = p[:1100], p[1100:1400], p[1400:]
    return (x[tr], y[tr]), (x[ca], y[ca]), (x[te], y[te])


def _cbr(ci: int, co: int, k: int = 3, s: int = 1, g: int = 1, act=nn.ReLU) -> list[nn.Module]:
    return [nn.Conv2d(ci, co, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(co), act()]


class Block(nn.Module):
    """ResNet basic block; the shortcut is the identity, or a 1x1 convolution with BN."""

    def __init__(self, ci: int, co: int, s: int):
        super().__init__()
        self.body = nn.Sequential(*_cbr(ci, co, 3, s), nn.Conv2d(co, co, 3, 1, 1, bias=False), nn.BatchNorm2d(co))
        self.short = (nn.Identity() if (ci == co and s == 1) else
                      nn.Sequential(nn.Conv2d(ci, co, 1, s, bias=False), nn.BatchNorm2d(co)))

    def forward(self, x):
        return torch.relu(self.body(x) + self.short(x))


def _mobile() -> nn.Module:
    def dws(ci, co, s):
        return [*_cbr(ci, ci, 3, s, ci, nn.ReLU6), *_cbr(ci, co, 1, 1, 1, nn.ReLU6)]
    return nn.Sequential(*_cbr(1, 16, 3, 2, 1, nn.ReLU6), *dws(16, 32, 1), *dws(32, 64, 2), *dws(64, 64, 1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


NETS = {  # name: (builder, data, epochs)
    "resnet_id": (lambda: nn.Sequential(*_cbr(1, 16), Block(16, 16, 1), nn.AvgPool2d(2), *_cbr(16, 32),
                                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)), _digits, 30),
    "resnet_proj": (lambda: nn.Sequential(*_cbr(1, 16), Block(16, 16, 1), Block(16, 32, 2),
                                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)), _digits, 30),
    "stride2": (lambda: nn.Sequential(*_cbr(1, 16, 3, 2), *_cbr(16, 32, 3, 2), *_cbr(32, 64, 3, 2), nn.Flatten(),
                                      nn.Linear(64 * 16, 128), nn.ReLU(), nn.Linear(128, 10)), _fashion, 4),
    "mobile": (_mobile, _fashion, 5),
}


def train(out: Path, names: list[str]) -> None:
    for name in names:
        build, data, epochs = NETS[name]
        torch.manual_seed(0)
        (xtr, ytr), (xca, yca), (xte, yte) = data()
        m = build()
        opt = torch.optim.Adam(m.parameters(), 2e-3)
        for ep in range(epochs):
            m.train()
            p = np.random.default_rng(ep).permutation(len(xtr))
            for i in range(0, len(p), 64):
                b = p[i:i + 64]
                loss = nn.functional.cross_entropy(m(torch.from_numpy(xtr[b])), torch.from_numpy(ytr[b]))
                opt.zero_grad()
                loss.backward()
                opt.step()
        m.eval()
        d = out / name
        d.mkdir(parents=True, exist_ok=True)
        torch.onnx.export(m, torch.from_numpy(xte[:1]), str(d / "model.onnx"), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, opset_version=13, dynamo=False)
        np.savez(d / "calib.npz", x=xca, y=yca)
        np.savez(d / "test.npz", x=xte, y=yte)
        print(name, "written", flush=True)


def measure(data: Path, names: list[str], opts: dict, timesteps: list[int], calibrate: str) -> None:
    from snncompile.app.compile import CompileRequest
    from snncompile.calibrate.statistics import activation_scales
    from snncompile.frontend import import_onnx, load_onnx
    from snncompile.passes.calibrate_bias import calibrate_biases
    from snncompile.passes.convert import convert
    from snncompile.sim.ann import ann_forward
    from snncompile.sim.simulator import simulate

    req = CompileRequest(model="", out="")
    norm = opts.pop("norm", req.norm)
    percentile = opts.pop("percentile", req.percentile)
    for name in names:
        model = load_onnx(str(data / name / "model.onnx"))
        ann = import_onnx(model).graph
        xc, test = np.load(data / name / "calib.npz")["x"], np.load(data / name / "test.npz")
        xt, yt = test["x"], test["y"]
        cal = activation_scales(model, ann, xc, norm, percentile)
        line = {"net": name, "norm": norm, "percentile": percentile, **opts,
                "ann": float((ann_forward(ann, xt).numpy().argmax(1) == yt).mean())}
        for mode in (["plain", "calibrated"] if calibrate == "both" else [calibrate]):
            acc = {}
            for T in timesteps:
                snn = convert(ann, cal, dataclasses.replace(req.options, timesteps=T, **opts))
                if mode == "calibrated":
                    snn, _ = calibrate_biases(snn, ann, xc)
                acc[T] = float((simulate(snn, xt, T).output.argmax(1) == yt).mean())
            line[mode] = acc
        print(json.dumps(line), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--nets", default=",".join(NETS))
    m = sub.add_parser("measure")
    m.add_argument("--data", type=Path, required=True)
    m.add_argument("--nets", default=",".join(NETS))
    m.add_argument("--opts", default="{}",
                   help="conversion options as JSON (ConversionOptions fields, norm, percentile)")
    m.add_argument("--timesteps", default="4,8,16,32")
    m.add_argument("--calibrate", choices=["plain", "calibrated", "both"], default="both")
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.cmd == "train":
        train(a.out, a.nets.split(","))
    else:
        measure(a.data, a.nets.split(","), json.loads(a.opts), [int(t) for t in a.timesteps.split(",")], a.calibrate)


if __name__ == "__main__":
    main()
