"""Train the bundled digits CNN and export it to ONNX for snncompile.

The example needs a small, real, offline data set and a trained ANN to convert.
sklearn's ``load_digits`` (1797 8x8 images, shipped inside scikit-learn) gives
both without any download. This script trains a small CNN on it, exports the
model with torch's legacy ONNX exporter, checks the export with onnxruntime and
writes the data splits next to it so later steps (conversion, calibration,
spiking simulation) all see exactly the same samples.

Usage::

    .venv/bin/python examples/digits/train.py --out examples/digits/data [--seed 0] [--epochs N]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

SPLIT_SEED = 0  # fixed, so the test set does not move when --seed changes
CALIB_SIZE = 256
BATCH_SIZE = 32
LR = 5e-3


def build_model(arch: str = "pool") -> nn.Module:
    """The CNN to convert: only conv, ReLU, average pooling and linear layers.

    ``pool`` (the demo): conv16-avgpool-conv32-avgpool-fc64-10. ``stride``: average pools
    replaced by stride-2 convolutions, as the PTL authors build their models, so no sum pool
    multiplies a layer's synapses (conv16-conv32/2-conv32/2-fc64-10). Layers are named so the
    ONNX initializers read ``conv1.weight`` etc.
    """
    if arch == "stride":
        return nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(1, 16, 3, padding=1)), ("relu1", nn.ReLU()),
            ("conv2", nn.Conv2d(16, 32, 3, stride=2, padding=1)), ("relu2", nn.ReLU()),
            ("conv3", nn.Conv2d(32, 32, 3, stride=2, padding=1)), ("relu3", nn.ReLU()),
            ("flatten", nn.Flatten()), ("fc1", nn.Linear(32 * 2 * 2, 64)), ("relu4", nn.ReLU()),
            ("fc2", nn.Linear(64, 10)),
        ]))
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(1, 16, 3, padding=1)), ("relu1", nn.ReLU()), ("pool1", nn.AvgPool2d(2)),
        ("conv2", nn.Conv2d(16, 32, 3, padding=1)), ("relu2", nn.ReLU()), ("pool2", nn.AvgPool2d(2)),
        ("flatten", nn.Flatten()), ("fc1", nn.Linear(32 * 2 * 2, 64)), ("relu3", nn.ReLU()),
        ("fc2", nn.Linear(64, 10)),
    ]))


def load_splits(seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Return train/val/test/calib as (x float32 (N,1,8,8) in [0,1], y int64).

    70/30 stratified train/test, then 15% of train held out for validation;
    calib is a random 256-sample subset of the (reduced) train split.
    """
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=0.3, stratify=y, random_state=SPLIT_SEED)
    x_tr, x_va, y_tr, y_va = train_test_split(
        x_tr, y_tr, test_size=0.15, stratify=y_tr, random_state=SPLIT_SEED)
    idx = np.sort(np.random.default_rng(seed).choice(len(x_tr), CALIB_SIZE, replace=False))
    return {"train": (x_tr, y_tr), "val": (x_va, y_va), "test": (x_te, y_te),
            "calib": (x_tr[idx], y_tr[idx])}


@torch.no_grad()
def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(top-1 accuracy, mean cross-entropy) of ``model`` in eval mode on a split."""
    model.eval()
    logits = model(torch.from_numpy(x))
    loss = nn.functional.cross_entropy(logits, torch.from_numpy(y))
    return float((logits.argmax(1).numpy() == y).mean()), float(loss)


def train(splits: dict, seed: int, epochs: int, arch: str = "pool") -> tuple[nn.Module, float, int]:
    """Train with Adam; return the model from the epoch with best val accuracy."""
    x_tr, y_tr = (torch.from_numpy(a) for a in splits["train"])
    model = build_model(arch)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    gen = torch.Generator().manual_seed(seed)
    best_key, best_epoch, best_state = (-1.0, 0.0), 0, None
    for epoch in range(1, epochs + 1):
        model.train()
        perm = torch.randperm(len(x_tr), generator=gen)
        total = 0.0
        for i in range(0, len(perm), BATCH_SIZE):
            b = perm[i:i + BATCH_SIZE]
            loss = nn.functional.cross_entropy(model(x_tr[b]), y_tr[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(b)
        val_acc, val_loss = evaluate(model, *splits["val"])
        # The val split is small (189) and often saturates, so break accuracy
        # ties by lower val loss; exact ties keep the earlier epoch.
        if (val_acc, -val_loss) > best_key:
            best_key, best_epoch = (val_acc, -val_loss), epoch
            best_state = copy.deepcopy(model.state_dict())
        print(f"epoch {epoch:3d}  loss {total / len(perm):.4f}  val {val_acc:.4f}"
              f" (loss {val_loss:.4f}){'  *' if epoch == best_epoch else ''}")
    model.load_state_dict(best_state)
    return model.eval(), best_key[0], best_epoch


def export_onnx(model: nn.Module, path: Path) -> None:
    """Export with the legacy (TorchScript) exporter, dynamic batch, opset 17."""
    tmp = path.with_name(f".{path.name}.tmp")
    with warnings.catch_warnings():
        # The legacy exporter announces its own deprecation (DeprecationWarning
        # attributed to this file, so Python would print it); that is expected.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(model, torch.zeros(1, 1, 8, 8), str(tmp), dynamo=False,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=17)
    os.replace(tmp, path)


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    """np.savez to a temporary file in the same folder, then rename over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:  # a file object stops savez from appending ".npz"
        np.savez(f, **arrays)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, train, export, verify the ONNX file, write everything."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--epochs", type=int, default=60, help="training epochs")
    p.add_argument("--arch", choices=("pool", "stride"), default="pool",
                   help="average pooling (the demo) or stride-2 convolutions instead")
    args = p.parse_args(argv)

    start = time.perf_counter()
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.set_num_threads(1)
    try:
        torch.use_deterministic_algorithms(True)
    except Exception as exc:  # pragma: no cover - depends on the torch build
        print(f"note: deterministic algorithms unavailable ({exc})")

    args.out.mkdir(parents=True, exist_ok=True)
    splits = load_splits(args.seed)
    print("samples: " + ", ".join(f"{k} {len(v[1])}" for k, v in splits.items()))
    model, val_acc, best_epoch = train(splits, args.seed, args.epochs, args.arch)
    x_te, y_te = splits["test"]
    test_acc = evaluate(model, x_te, y_te)[0]

    onnx_path = args.out / "digits_cnn.onnx"
    export_onnx(model, onnx_path)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    onnx_logits = sess.run(["logits"], {"input": x_te})[0]
    with torch.no_grad():
        torch_logits = model(torch.from_numpy(x_te)).numpy()
    max_diff = float(np.abs(onnx_logits - torch_logits).max())
    onnx_acc = float((onnx_logits.argmax(1) == y_te).mean())
    if max_diff >= 1e-4 or onnx_acc != test_acc:  # not `assert`: must survive -O
        raise RuntimeError(f"ONNX export mismatch: max|diff| {max_diff}, "
                           f"accuracy {onnx_acc} (onnx) vs {test_acc} (torch)")

    for name, (x, y) in splits.items():
        save_npz(args.out / f"{name}.npz", x=x, y=y)
    metrics = {"test_accuracy": test_acc, "val_accuracy": val_acc,
               "epochs": args.epochs, "best_epoch": best_epoch, "seed": args.seed}
    tmp = args.out / ".ann_metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    os.replace(tmp, args.out / "ann_metrics.json")

    print(f"best epoch {best_epoch}/{args.epochs}  val {val_acc:.4f}  test {test_acc:.4f}  "
          f"onnx max|diff| {max_diff:.1e}  ({time.perf_counter() - start:.1f} s)")
    print(f"wrote {onnx_path} and train/val/test/calib.npz, ann_metrics.json to {args.out}")


if __name__ == "__main__":
    main()
