"""What the fan-in limit, the count levels and the spiking dynamics each cost a network.

PTL's T = 4 gap on Fashion-MNIST stayed near 1.2 points through every schedule tried, so
this separates the losses. It trains the network, every fan-in mask imposed, as an
idealised quantized network: each hidden layer passes the value of the spike count it would
fire with all its charge at once (``lam * clamp(round(z T / lam), 0, T) / T``,
straight-through; ``TandemNet.count_aware``), its scale re-measured in order on the pruned
network; ANN speed, Adam (lr 1e-3, weight decay 1e-5) with a cosine decay over ``--epochs``,
the best validation epoch kept (classification only). Its test accuracy is what the network
reaches when only the masks and the count levels cost (with ``--relu``: only the masks), a
reference for tuning, not a bound: a spiking layer's count also depends on when its charge
arrives, and tuning trains for that. Then it converts that network to the integer SNN
(every layer spiking, weights quantized to ``--bits``) untuned: the cost of the dynamics.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python bench/count_model.py --data /tmp/fm8 --timesteps 4 \\
        --percentile 99 --epochs 12
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from snncompile.calibrate.statistics import activation_scales
from snncompile.passes.convert import ConversionOptions, convert
from snncompile.data import load_npz
from snncompile.frontend import import_onnx, load_onnx
from snncompile.app.compile import seed_everything
from snncompile.tune.model import TandemNet
from snncompile.tune.objective import evaluate


def train(net: TandemNet, train_data, val_data, epochs: int, seed: int) -> tuple[float, int, float]:
    """Train every weight with Adam and a cosine decay; end with the best validation epoch's
    weights (ties: lower validation loss) and return its validation accuracy, its number
    and the validation accuracy before training."""
    params = net.trainable(0)
    opt = torch.optim.Adam(params, lr=1e-3, weight_decay=1e-5)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.as_tensor(train_data.x), torch.as_tensor(train_data.y)
    key = lambda m: (m["accuracy"], -m["loss"])  # noqa: E731 - ties: lower validation loss
    best = (key(evaluate(net, val_data)), 0, copy.deepcopy(net.state_dict()))
    start = best[0][0]
    for epoch in range(1, epochs + 1):
        net.train()
        for b in torch.randperm(len(x), generator=gen).split(64):
            loss = torch.nn.functional.cross_entropy(net(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
        net.eval()
        m = evaluate(net, val_data)
        print(f"epoch {epoch}: val {m['accuracy']:.4f} (loss {m['loss']:.4f})", flush=True)
        if key(m) > best[0]:
            best = (key(m), epoch, copy.deepcopy(net.state_dict()))
    net.load_state_dict(best[2])
    return best[0][0], best[1], start


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="an example's train.py output folder")
    p.add_argument("--timesteps", type=int, default=4)
    p.add_argument("--bits", type=int, default=8)
    p.add_argument("--fanin", type=int, default=64)
    p.add_argument("--percentile", type=float, default=99.9)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--spikes", choices=("binary", "signed"), default="binary",
                   help="the neurons of the converted SNN (the training does not depend on it)")
    p.add_argument("--relu", action="store_true",
                   help="hidden layers pass relu(z) instead: the cost of the fan-in masks alone")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    seed_everything(args.seed)
    found = sorted(args.data.glob("*.onnx"))
    if len(found) != 1:
        raise SystemExit(f"expected one .onnx file in {args.data}, found {len(found)}")
    model = load_onnx(str(found[0]))
    ann = import_onnx(model).graph
    data = {s: load_npz(args.data / f"{s}.npz", ann.input.shape, need_labels=s != "calib")
            for s in ("train", "val", "test", "calib")}
    calib = activation_scales(model, ann, data["calib"].x, "percentile", args.percentile, seed=args.seed)
    snn = convert(ann, calib, ConversionOptions(timesteps=args.timesteps, weight_bits=args.bits,
                                                spikes=args.spikes))
    net = TandemNet(snn, bits=args.bits, fanin=args.fanin, prune_lead=len(snn.nodes))
    net.count_aware = not args.relu
    net.set_stage(0)  # every fan-in mask imposed (prune_lead covers every layer)
    if net.count_aware:
        xc = torch.as_tensor(data["calib"].x)
        for layer in net.layers:
            net.recalibrate(layer, xc, args.percentile)
    t0 = time.perf_counter()
    best = train(net, data["train"], data["val"], args.epochs, args.seed)
    seconds = time.perf_counter() - t0
    modelled = evaluate(net, data["test"])["accuracy"]
    net.set_stage(net.n_stages)
    spiking = evaluate(net, data["test"])["accuracy"]
    ann_acc = json.loads((args.data / "ann_metrics.json").read_text())["test_accuracy"]
    print(json.dumps({"data": str(args.data), "T": args.timesteps, "percentile": args.percentile,
                      "hidden": "relu" if args.relu else "count model", "spikes": args.spikes,
                      "epochs": args.epochs, "seed": args.seed, "ann_test": ann_acc,
                      "test": round(modelled, 4), "val": round(best[0], 4), "best_epoch": best[1],
                      "val_untrained": round(best[2], 4),
                      "snn_test_untuned": round(spiking, 4), "seconds": round(seconds, 1)}), flush=True)


if __name__ == "__main__":
    main()
