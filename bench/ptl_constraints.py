"""Progressive versus all-at-once constraints on the digits CNN (8-bit weights, fan-in 64).

Each configuration compiles the same trained model with the same calibration, seed and
epoch budget, and is scored by the reference simulator on the held-out test split:

* ``convert``        primitive conversion, 16-bit weights, no limits (reference)
* ``limits-only``    --bits/--fanin imposed at conversion, no tuning
* ``tl``             all layers spiking and all limits imposed at once, then tuned (TL)
* ``ptl-0``          PTL, each layer pruned, quantized and spiking in the same stage
* ``ptl``            PTL as shipped: all fan-in masks first (ANN stage 0), then layer by
                     layer quantized and spiking (--prune-ahead 99)
* ``convert-bits8``, ``ptl-bits8``  8-bit weights without a fan-in limit (not in the default run)
* ``ptl-channels``   PTL with structured fan-in (--fanin-mode channels; not in the default run)

Usage (writes bench/results/ptl_constraints.json and prints a markdown table)::

    .venv/bin/python bench/ptl_constraints.py --data examples/digits/data --seeds 0 --epochs 24
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from snncompile.passes.convert import ConversionOptions
from snncompile.app.compile import CompileRequest, compile_model
from snncompile.measure.evaluate import evaluate_artifact

CONFIGS = {
    "convert": dict(bits=16, fanin=None, method=None),
    "limits-only": dict(bits=8, fanin=64, method=None),
    "tl": dict(bits=8, fanin=64, method="tl"),
    "ptl-0": dict(bits=8, fanin=64, method="ptl", prune_ahead=0),
    "ptl": dict(bits=8, fanin=64, method="ptl", prune_ahead=99),
    "convert-bits8": dict(bits=8, fanin=None, method=None),
    "ptl-bits8": dict(bits=8, fanin=None, method="ptl"),
    "ptl-channels": dict(bits=8, fanin=64, method="ptl", prune_ahead=99, fanin_mode="channels"),
}


def run_one(data: Path, name: str, seed: int, epochs: int, timesteps: int, work: Path) -> dict:
    cfg = CONFIGS[name]
    out = work / f"{name}-{seed}"
    req = CompileRequest(model=str(data / "digits_cnn.onnx"), out=str(out), calib=str(data / "calib.npz"),
                         seed=seed, options=ConversionOptions(timesteps=timesteps, weight_bits=cfg["bits"]),
                         fanin=cfg["fanin"], epochs=epochs, prune_ahead=cfg.get("prune_ahead", 99),
                         fanin_mode=cfg.get("fanin_mode", "magnitude"))
    if cfg["method"]:
        req.train, req.val, req.method = str(data / "train.npz"), str(data / "val.npz"), cfg["method"]
    t0 = time.perf_counter()
    compile_model(req)
    seconds = time.perf_counter() - t0
    ev = evaluate_artifact(str(out), str(data / "test.npz"))
    return {"config": name, "seed": seed, "ann_accuracy": ev["ann_accuracy"],
            "snn_accuracy": ev["snn_accuracy"], "max_weight_bits": ev["max_weight_bits"],
            "max_fanin": ev["max_fanin"], "compile_seconds": round(seconds, 1),
            "epochs": ev.get("tuning", {}).get("epochs", 0) if ev.get("tuning") else 0}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path("examples/digits/data"))
    p.add_argument("--seeds", default="0")
    p.add_argument("--epochs", type=int, default=24)
    p.add_argument("--timesteps", type=int, default=8)
    p.add_argument("--configs", default="convert,limits-only,tl,ptl-0,ptl")
    p.add_argument("--out", type=Path, default=Path("bench/results/ptl_constraints.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        # the reference for tuning time: training the ANN itself (60 epochs, same data)
        import subprocess
        import sys
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "examples/digits/train.py", "--out", str(Path(tmp) / "ann")],
                       check=True, capture_output=True)
        ann_seconds = round(time.perf_counter() - t0, 1)
        print(json.dumps({"ann_train_seconds": ann_seconds}), flush=True)
        for seed in [int(s) for s in args.seeds.split(",")]:
            for name in args.configs.split(","):
                r = run_one(args.data, name, seed, args.epochs, args.timesteps, Path(tmp))
                print(json.dumps(r), flush=True)
                rows.append(r)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"command": "python bench/ptl_constraints.py " + " ".join(argv or []),
            "machine": f"{platform.machine()}, {os.cpu_count()} cpus, torch threads 1",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "epochs": args.epochs,
            "timesteps": args.timesteps, "ann_train_seconds": ann_seconds}
    tmp_out = args.out.with_suffix(".tmp")
    tmp_out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    os.replace(tmp_out, args.out)
    print(f"\nANN training (examples/digits/train.py, 60 epochs): {ann_seconds} s")
    print("\n| config | seed | ANN acc | SNN acc (T=%d) | max w bits | max fan-in | epochs | s |" % args.timesteps)
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['seed']} | {r['ann_accuracy']:.4f} | {r['snn_accuracy']:.4f} | "
              f"{r['max_weight_bits']} | {r['max_fanin']} | {r['epochs']} | {r['compile_seconds']} |")


if __name__ == "__main__":
    main()
