"""The Python API end to end: train a small CNN on sklearn's digits with torch, convert the
module (no ONNX file to write yourself), evaluate it, run it on a backend, check it.

    .venv/bin/python examples/python_api.py [--out DIR] [--epochs 20]

Everything runs on the CPU in well under a minute; tests/test_python_api.py runs these
same steps.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

import snncompile as sc


def digits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """train/test splits of the 8x8 digits, x float32 (N, 1, 8, 8) in [0, 1]."""
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    x_tr, x_te, y_tr, y_te = train_test_split(x, d.target, test_size=0.3, stratify=d.target,
                                              random_state=0)
    return {"train": (x_tr, y_tr), "test": (x_te, y_te)}


def train(x: np.ndarray, y: np.ndarray, epochs: int, seed: int = 0) -> nn.Module:
    """A conv-pool-dense network with ReLUs (what converts to integrate-and-fire layers)."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
                        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
                        nn.Flatten(), nn.Linear(128, 10))
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y).long()
    for _ in range(epochs):
        for b in torch.randperm(len(xt)).split(32):
            loss = nn.functional.cross_entropy(net(xt[b]), yt[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def main(out: Path, epochs: int = 20) -> dict:
    data = digits()
    x_tr, y_tr = data["train"]
    x_te, y_te = data["test"]
    net = train(x_tr, y_tr, epochs)

    # Convert the torch module directly: it is exported through torch's ONNX exporter
    # (the first calibration sample gives the input shape). Every `snncompile convert`
    # option is a keyword here, named as its flag (bits, fanin, membrane_bits, ...).
    build = sc.convert(net, out / "digits.cyclesim", target="cyclesim", bits=8, membrane_bits=24,
                       calib=x_tr[:256], timesteps=16, force=True)
    print(f"built {build.path}: {build.layers} IF layers, T={build.timesteps}, target {build.target}")

    ev = sc.evaluate(build, x_te, y_te, timesteps=[4, 8, 16])
    print(f"ANN accuracy {ev.ann_accuracy:.4f}, SNN accuracy {ev.snn_accuracy:.4f} at T={ev.timesteps}, "
          f"{ev.synops_per_sample:.0f} SynOps/sample")
    for p in ev.sweep:
        print(f"  T={p.timesteps:2d}: SNN accuracy {p.snn_accuracy:.4f}")
    for layer in ev.layers:
        print(f"  {layer.name}: {layer.neurons} neurons, fan-in {layer.max_fanin}, "
              f"{layer.spikes_per_sample:.0f} spikes/sample")

    ran = sc.run(build, x_te[:64], y_te[:64])
    print(f"ran {ran.samples} samples on {ran.backend}: bit-exact {ran.bit_exact}, accuracy {ran.accuracy:.4f}")

    gate = sc.check(build, target="loihi")  # would this build fit Loihi as it is?
    print(f"fits loihi: {gate.passed}")
    for c in gate.failed()[:3]:
        print(f"  {c.message}")

    try:  # mistakes come back as the project's own errors, with a hint
        sc.evaluate(build, x_te[:, :, :4], y_te)
    except sc.DataError as e:
        print(f"as expected: {e.message}")
    return {"build": build, "evaluation": ev, "run": ran, "check": gate}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="where to write the build (default: a temp folder)")
    ap.add_argument("--epochs", type=int, default=20)
    args = ap.parse_args()
    if args.out is None:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp), args.epochs)
    else:
        main(args.out, args.epochs)
