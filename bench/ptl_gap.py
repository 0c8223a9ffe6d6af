"""One PTL configuration on the digits CNN over several seeds: the search for issue 3's gap.

Compiles the model with `--bits 8 --fanin 64 --timesteps 8` (or ``--bits``/``--timesteps``) and PTL (60 epochs, patience 6),
changing only what ``--set`` (fields of :class:`snncompile.pipeline.CompileRequest`) and
``--opt`` (fields of :class:`snncompile.tandem.schedule.TrainOptions` that have no CLI
flag, e.g. ``lr``, ``final_lr``, ``recalibrate``) say, and prints one JSON line per seed:
test accuracy (reference simulator), the final validation accuracy and loss the scheduler
saw, and each stage's best epoch. Values are JSON (``--set norm='"channel"'``).

Usage::

    .venv/bin/python bench/ptl_gap.py --data DIR --name p99 --set percentile=99.0
    .venv/bin/python bench/ptl_gap.py --data DIR --name lr3e-4 --opt lr=3e-4
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import snncompile.tandem.schedule as schedule
from snncompile.artifact import read_artifact
from snncompile.convert import ConversionOptions
from snncompile.pipeline import CompileRequest, compile_model, evaluate_artifact


def _values(pairs: list[str]) -> dict[str, Any]:
    out = {}
    for kv in pairs:
        k, v = kv.split("=", 1)
        out[k] = json.loads(v)
    return out


def run_seed(data: Path, seed: int, timesteps: int, bits: int, extra: dict[str, Any]) -> dict[str, Any]:
    """Compile, tune and score one seed; the artifact goes to a temporary directory."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        kw: dict[str, Any] = dict(model=str(data / "digits_cnn.onnx"), out=str(out), calib=str(data / "calib.npz"),
                                  seed=seed, options=ConversionOptions(timesteps=timesteps, weight_bits=bits),
                                  fanin=64, epochs=60, train=str(data / "train.npz"), val=str(data / "val.npz"),
                                  method="ptl")
        kw.update(extra)
        t0 = time.perf_counter()
        summary = compile_model(CompileRequest(**kw))
        seconds = time.perf_counter() - t0
        ev = evaluate_artifact(str(out), str(data / "test.npz"))
        stages = read_artifact(str(out)).info["tuning"]["stages"]
    return {"seed": seed, "test": ev["snn_accuracy"], "ann": ev["ann_accuracy"],
            "val": summary["tuning"].get("val_accuracy"), "val_loss": round(summary["tuning"]["val_loss"], 4),
            "epochs": summary["tuning"]["epochs"], "seconds": round(seconds, 1),
            "best_epochs": [s["best_epoch"] for s in stages]}


def _report_stages(test_path: Path) -> None:
    """Wrap the scheduler's stage so that each stage prints the test accuracy of the network
    it started from (converted) and ended with (best), and its training accuracy and loss."""
    import numpy as np

    from snncompile.data import Dataset

    with np.load(test_path) as f:
        test = Dataset(x=f["x"], y=f["y"], path=str(test_path))
    run_stage = schedule._run_stage

    def wrapped(net, train, val, opts, stage, *a, **kw):
        start = schedule.evaluate(net, test)["accuracy"]
        out = run_stage(net, train, val, opts, stage, *a, **kw)
        tr = schedule.evaluate(net, train)
        print(json.dumps({"stage": stage, "test_converted": round(start, 4),
                          "test_best": round(schedule.evaluate(net, test)["accuracy"], 4),
                          "train_accuracy": round(tr["accuracy"], 4), "train_loss": round(tr["loss"], 5)}), flush=True)
        return out

    schedule._run_stage = wrapped


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="examples/digits/train.py --arch stride output")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--name", required=True, help="a label for the configuration")
    p.add_argument("--timesteps", type=int, default=8)
    p.add_argument("--bits", type=int, default=8)
    p.add_argument("--set", action="append", default=[], metavar="FIELD=JSON", help="CompileRequest field")
    p.add_argument("--opt", action="append", default=[], metavar="FIELD=JSON", help="TrainOptions field")
    p.add_argument("--per-stage", action="store_true",
                   help="diagnostic: print train and test accuracy after each stage (never used to choose)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    extra, opts = _values(args.set), _values(args.opt)
    if opts:  # the pipeline builds TrainOptions from the request: add the fields it has no flag for
        plain = schedule.TrainOptions
        schedule.TrainOptions = lambda **kw: plain(**{**kw, **opts})  # type: ignore[misc]
    if args.per_stage:
        _report_stages(args.data / "test.npz")
    for seed in [int(s) for s in args.seeds.split(",")]:
        row = run_seed(args.data, seed, args.timesteps, args.bits, extra)
        print(json.dumps({"name": args.name, **row, "set": extra, "opt": opts}), flush=True)


if __name__ == "__main__":
    main()
