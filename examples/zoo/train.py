"""Train one zoo architecture on full Fashion-MNIST and export it to ONNX for snncompile.

The data loading, splits, training loop (Adam, cosine schedule, best validation epoch kept)
and the checked ONNX export are the Fashion-MNIST example's (examples/fashion_mnist/train.py);
this script only picks the architecture (examples/zoo/models.py) and writes the splits in its
input layout (the MLP takes flat 784-vectors).

Usage::

    .venv/bin/python examples/zoo/train.py --arch resnet --out examples/zoo/data/resnet \
        [--epochs 4] [--seed 0] [--data-dir /usr/share/datasets/fashion-mnist]

Writes to --out: ``model.onnx`` (input ``input``, output ``logits``), ``train.npz``,
``val.npz``, ``test.npz``, ``calib.npz`` (x float32 in the model's input layout, y int64),
``ann_metrics.json`` and ``model.pt`` (the torch state_dict, for converters that take the
torch model: the peers in bench/zoo.py).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from models import ARCHS, build, fashion_example, input_layout  # noqa: E402

from snncompile.tune.runtime.allocator import keep_step_memory  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, read the IDX files, train, export, verify the ONNX file, write everything."""
    fm = fashion_example()
    args = fm.parse_args(argv, epochs=4, extra=lambda p: p.add_argument(
        "--arch", required=True, choices=sorted(ARCHS), help="architecture"), description=__doc__)
    start = time.perf_counter()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as the Fashion-MNIST example and tuning run
    keep_step_memory()
    try:
        splits = fm.load_splits(args.data_dir, args.seed)
    except fm.IdxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    splits = {k: (input_layout(args.arch, x), y) for k, (x, y) in splits.items()}
    print(f"{args.arch}: " + ", ".join(f"{k} {len(v[1])}" for k, v in splits.items()), flush=True)
    model = build(args.arch)
    params = sum(p.numel() for p in model.parameters())
    model, val_acc, best_epoch = fm.train(splits, args.seed, args.epochs, model=model)
    train_seconds = time.perf_counter() - start
    x_te, y_te = splits["test"]
    test_acc = fm.evaluate(model, x_te, y_te)[0]

    metrics = {"arch": args.arch, "test_accuracy": test_acc, "val_accuracy": val_acc,
               "epochs": args.epochs, "best_epoch": best_epoch, "seed": args.seed,
               "parameters": params, "train_seconds": round(train_seconds, 1), "threads": args.threads}
    fm.write_outputs(args.out, "model.onnx", model, splits, metrics)
    tmp = args.out / ".model.pt.tmp"
    torch.save(model.state_dict(), tmp)  # for converters that take the torch model (bench/zoo.py's peers)
    os.replace(tmp, args.out / "model.pt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
