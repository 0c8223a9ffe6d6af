"""Train a small digits autoencoder (a regression task) and export it to ONNX for snncompile.

PTL's image-reconstruction setting on offline data: scikit-learn's ``load_digits`` images
(8x8, scaled to [0, 1]) are encoded by two conv layers and decoded by dense layers back to
the 64 pixels. The output layer is linear (no sigmoid), so it maps to the SNN's
non-spiking output accumulator; the targets ``y`` are the flattened input images (float),
which snncompile scores by mean squared error and PSNR.

Usage::

    .venv/bin/python examples/digits_autoencoder/train.py --out examples/digits_autoencoder/data
"""

from __future__ import annotations

import argparse
import copy
import os
import time
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

SPLIT_SEED = 0


def build_model() -> nn.Module:
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(1, 16, 3, padding=1)), ("relu1", nn.ReLU()),
        ("conv2", nn.Conv2d(16, 16, 3, stride=2, padding=1)), ("relu2", nn.ReLU()),
        ("flatten", nn.Flatten()), ("fc1", nn.Linear(16 * 4 * 4, 32)), ("relu3", nn.ReLU()),
        ("fc2", nn.Linear(32, 64)),
    ]))


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=60)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)

    x = (load_digits().images / 16.0).astype(np.float32)[:, None]
    x_tr, x_te = train_test_split(x, test_size=0.3, random_state=SPLIT_SEED)
    x_tr, x_va = train_test_split(x_tr, test_size=0.15, random_state=SPLIT_SEED)
    flat = lambda a: a.reshape(len(a), -1).copy()  # noqa: E731

    model = build_model()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(args.seed)
    xt = torch.from_numpy(x_tr)
    best, best_state = float("inf"), None
    for epoch in range(args.epochs):
        model.train()
        for b in torch.randperm(len(xt), generator=gen).split(32):
            loss = nn.functional.mse_loss(model(xt[b]), xt[b].flatten(1))
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            val = float(nn.functional.mse_loss(model(torch.from_numpy(x_va)), torch.from_numpy(flat(x_va))))
        if val < best:
            best, best_state = val, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    model.eval()
    with torch.no_grad():
        mse = float(nn.functional.mse_loss(model(torch.from_numpy(x_te)), torch.from_numpy(flat(x_te))))

    tmp = args.out / ".autoencoder.onnx.tmp"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(model, torch.zeros(1, 1, 8, 8), str(tmp), dynamo=False, input_names=["input"],
                          output_names=["pixels"], dynamic_axes={"input": {0: "n"}, "pixels": {0: "n"}},
                          opset_version=17)
    os.replace(tmp, args.out / "autoencoder.onnx")
    for name, a in (("train", x_tr), ("val", x_va), ("test", x_te)):
        save_npz(args.out / f"{name}.npz", x=a, y=flat(a))
    save_npz(args.out / "calib.npz", x=x_tr[:256])
    print(f"val mse {best:.5f}  test mse {mse:.5f}  test PSNR {10 * np.log10(1 / mse):.2f} dB  "
          f"({time.perf_counter() - t0:.1f} s); wrote {args.out}")


if __name__ == "__main__":
    main()
