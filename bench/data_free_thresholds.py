"""Thresholds without calibration data: BatchNorm statistics and weight bounds against
calibrated conversion, on small BN networks of the zoo trained here on part of Fashion-MNIST.

For each architecture (examples/zoo/models.py): train it (Adam, a subset of the training
images, a few epochs), export it with BatchNorm kept (``do_constant_folding=False``; torch's
exporter folds it into the convolution otherwise), then convert three ways at the same
options and evaluate the SNN on the first --test test images at T = 8, 16, 32: with
``--calib`` (512 training images), without (BatchNorm statistics), and with the weight-bound
fallback a model without BatchNorm gets. Prints one JSON line per architecture, with the
ratio of each layer's data-free scale to the calibrated one.

Usage::

    PYTHONPATH=. .venv/bin/python bench/data_free_thresholds.py --arch resnet mobilenet concat \\
        --train 15000 --epochs 3 --out /tmp/dft [--input-mode once|every_step]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


def _module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    spec.loader.exec_module(mod)
    return mod


def train_and_export(arch: str, out: Path, n_train: int, epochs: int, n_test: int) -> float:
    """Train ``arch`` on ``n_train`` Fashion-MNIST images, export model.onnx with BatchNorm
    kept, write calib.npz and test.npz; returns the ANN's accuracy on the test subset."""
    fm = _module("fm_train", ROOT / "examples/fashion_mnist/train.py")
    zoo = _module("zoo_models", ROOT / "examples/zoo/models.py")
    raw = fm.load_fashion_mnist(Path("/usr/share/datasets/fashion-mnist"))
    (x, y), (xt, yt) = raw["train"], raw["test"]
    idx = np.random.default_rng(0).permutation(len(x))
    tr, cal = idx[:n_train], idx[n_train:n_train + 512]
    lay = lambda a: zoo.input_layout(arch, a)  # noqa: E731
    torch.manual_seed(0)
    model = zoo.build(arch, 28, 16)
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    X, Y = torch.tensor(lay(x[tr])), torch.tensor(y[tr])
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(X))
        for i in range(0, len(X), 128):
            b = perm[i:i + 128]
            opt.zero_grad()
            nn.functional.cross_entropy(model(X[b]), Y[b]).backward()
            opt.step()
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model, torch.zeros(1, *lay(x[:1]).shape[1:]), str(out / "model.onnx"), dynamo=False,
                      do_constant_folding=False, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    np.savez(out / "calib.npz", x=lay(x[cal]), y=y[cal])
    np.savez(out / "test.npz", x=lay(xt[:n_test]), y=yt[:n_test])
    with torch.no_grad():
        return float((model(torch.tensor(lay(xt[:n_test]))).argmax(1).numpy() == yt[:n_test]).mean())


def measure(out: Path, input_mode: str) -> dict:
    """Convert three ways and evaluate each at T = 8, 16, 32."""
    import snncompile.app.compile as compile_mod
    from snncompile.app.compile import CompileRequest, compile_model
    from snncompile.calibrate.statistics import weight_bounds
    from snncompile.ir.options import ConversionOptions
    from snncompile.measure.evaluate import evaluate_artifact

    opts = ConversionOptions(timesteps=16, input_mode=input_mode)
    model = str(out / "model.onnx")
    compile_model(CompileRequest(model=model, out=str(out / "calibrated"), calib=str(out / "calib.npz"),
                                 options=opts, force=True))
    compile_model(CompileRequest(model=model, out=str(out / "bn_stats"), options=opts, force=True))
    real = compile_mod.data_free_scales
    compile_mod.data_free_scales = lambda m, ann, *a: weight_bounds(ann)  # the weight-bound thresholds
    try:
        compile_model(CompileRequest(model=model, out=str(out / "weight_bounds"), options=opts, force=True))
    finally:
        compile_mod.data_free_scales = real
    res: dict = {}
    lam = {k: json.loads((out / k / "compile.json").read_text())["lam"]
           for k in ("calibrated", "bn_stats", "weight_bounds")}
    for k in ("bn_stats", "weight_bounds"):
        res[f"{k}_over_calibrated"] = [round(float(np.mean(lam[k][n]) / np.mean(lam["calibrated"][n])), 3)
                                       for n in lam["calibrated"]]
    for k in ("calibrated", "bn_stats", "weight_bounds"):
        ev = evaluate_artifact(str(out / k), str(out / "test.npz"), [8, 16, 32], 256)
        res[k] = {r["timesteps"]: r["snn_accuracy"] for r in ev["sweep"]}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", nargs="+", default=["resnet", "mobilenet", "concat"])
    ap.add_argument("--train", type=int, default=15000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--input-mode", default="once", choices=["once", "every_step"])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    for arch in args.arch:
        d = args.out / arch
        ann = (json.loads((d / "ann.json").read_text())["ann"] if (d / "ann.json").is_file()
               else train_and_export(arch, d, args.train, args.epochs, args.test))
        (d / "ann.json").write_text(json.dumps({"ann": ann}))
        print(json.dumps({"arch": arch, "input_mode": args.input_mode, "ann": ann, **measure(d, args.input_mode)}),
              flush=True)


if __name__ == "__main__":
    main()
