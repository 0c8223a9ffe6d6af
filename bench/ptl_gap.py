"""One PTL configuration on an example's CNN over several seeds: the search for issue 3's gap.

Compiles the model with `--bits 8 --fanin 64 --timesteps 8` (or ``--bits``/``--timesteps``) and PTL (60 epochs, patience 6),
changing only what ``--set`` (fields of :class:`snncompile.app.compile.CompileRequest`) and
``--opt`` (fields of :class:`snncompile.tune.options.TrainOptions` that have no CLI
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
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import snncompile.tune.options as options_module
import snncompile.tune.ptl as schedule
from snncompile.tune import objective
from snncompile.targets.artifact import read_artifact
from snncompile.passes.convert import ConversionOptions
from snncompile.app.compile import CompileRequest, compile_model
from snncompile.measure.evaluate import evaluate_artifact


def _values(pairs: list[str]) -> dict[str, Any]:
    out = {}
    for kv in pairs:
        k, v = kv.split("=", 1)
        out[k] = json.loads(v)
    return out


def _model(data: Path) -> Path:
    """The example's ONNX file in ``data`` (digits_cnn.onnx, fmnist_cnn.onnx, ...)."""
    found = sorted(data.glob("*.onnx"))
    if len(found) != 1:
        raise SystemExit(f"expected one .onnx file in {data}, found {len(found)}")
    return found[0]


def _reuse_stages(src: Path, out: Path) -> None:
    """Copy the stage checkpoints of the run kept in ``src`` into ``out``, all but the last
    when that run finished (``src/compile.json``), so a resumed run re-trains only the final
    stage (the stages before it do not depend on options that act only there, such as
    ``joint_final``). No run.json: nothing to match."""
    stages = sorted(int(p.stem.split("_")[1]) for p in (src / "checkpoints").glob("stage_*.json"))
    if not stages:
        raise SystemExit(f"no stage checkpoints in {src / 'checkpoints'}")
    (out / "checkpoints").mkdir(parents=True)
    for k in stages[:-1] if (src / "compile.json").is_file() else stages:
        for ext in ("npz", "json"):
            shutil.copy(src / "checkpoints" / f"stage_{k}.{ext}", out / "checkpoints")


def run_seed(data: Path, seed: int, timesteps: int, bits: int, extra: dict[str, Any],
             epochs: int = 60, keep: Path | None = None, stages_from: Path | None = None,
             spikes: str = "binary") -> dict[str, Any]:
    """Compile, tune and score one seed; the artifact goes to a temporary directory, copied
    to ``keep/seed<seed>`` when given. With ``stages_from``, the stages before the last come
    from the checkpoints of that kept run (``stages_from/seed<seed>``)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        if stages_from is not None:
            _reuse_stages(stages_from / f"seed{seed}", out)
            extra = {**extra, "resume": True}
        kw: dict[str, Any] = dict(model=str(_model(data)), out=str(out), calib=str(data / "calib.npz"),
                                  seed=seed, options=ConversionOptions(timesteps=timesteps, weight_bits=bits, spikes=spikes),
                                  fanin=64, epochs=epochs, train=str(data / "train.npz"), val=str(data / "val.npz"),
                                  method="ptl")
        kw.update(extra)
        t0 = time.perf_counter()
        summary = compile_model(CompileRequest(**kw))
        seconds = time.perf_counter() - t0
        ev = evaluate_artifact(str(out), str(data / "test.npz"))
        stages = read_artifact(str(out)).info["tuning"]["stages"]
        if keep is not None:
            shutil.copytree(out, keep / f"seed{seed}", dirs_exist_ok=True)
    row = {"seed": seed, "test": ev["snn_accuracy"], "ann": ev["ann_accuracy"],
           "val": summary["tuning"].get("val_accuracy"), "val_loss": round(summary["tuning"]["val_loss"], 4),
           "epochs": summary["tuning"]["epochs"], "seconds": round(seconds, 1),
           "best_epochs": [s["best_epoch"] for s in stages]}
    ann_seconds = _ann_train_seconds(data)
    if ann_seconds:  # the time target of issue 3: tuning against training the ANN
        row["ann_train_seconds"] = ann_seconds
        row["time_ratio"] = round(seconds / ann_seconds, 2)
    return row


def _ann_train_seconds(data: Path) -> float | None:
    """The example's own training time (``train_seconds`` of its ann_metrics.json), if kept.
    Comparable with ``seconds`` only when both ran under the same load."""
    path = data / "ann_metrics.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("train_seconds")


def _report_stages(test_path: Path) -> None:
    """Wrap the scheduler's stage so that each stage prints the test accuracy of the network
    it started from (converted) and ended with (best), and its training accuracy and loss."""
    import numpy as np

    from snncompile.data import Dataset

    with np.load(test_path) as f:
        test = Dataset(x=f["x"], y=f["y"], path=str(test_path))
    run_stage = schedule._run_stage

    def wrapped(net, train, val, opts, stage, *a, **kw):
        start = objective.evaluate(net, test)["accuracy"]
        out = run_stage(net, train, val, opts, stage, *a, **kw)
        tr = objective.evaluate(net, train)
        print(json.dumps({"stage": stage, "test_converted": round(start, 4),
                          "test_best": round(objective.evaluate(net, test)["accuracy"], 4),
                          "train_accuracy": round(tr["accuracy"], 4), "train_loss": round(tr["loss"], 5)}), flush=True)
        return out

    schedule._run_stage = wrapped


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True,
                   help="an example's train.py output (digits --arch stride, fashion_mnist)")
    p.add_argument("--epochs", type=int, default=60, help="the tuning's epoch budget")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--name", required=True, help="a label for the configuration")
    p.add_argument("--timesteps", type=int, default=8)
    p.add_argument("--bits", type=int, default=8)
    p.add_argument("--spikes", choices=("binary", "signed"), default="binary")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=JSON", help="CompileRequest field")
    p.add_argument("--opt", action="append", default=[], metavar="FIELD=JSON", help="TrainOptions field")
    p.add_argument("--keep", type=Path, help="copy each seed's artifact (checkpoints too) to KEEP/seed<S>")
    p.add_argument("--stages-from", type=Path, metavar="KEEP",
                   help="take every stage but the last from a run kept with --keep (A/B of a final-stage option)")
    p.add_argument("--per-stage", action="store_true",
                   help="diagnostic: print train and test accuracy after each stage (never used to choose)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    extra, opts = _values(args.set), _values(args.opt)
    if opts:  # the pipeline builds TrainOptions from the request: add the fields it has no flag for
        plain = options_module.TrainOptions
        options_module.TrainOptions = lambda **kw: plain(**{**kw, **opts})  # type: ignore[misc]
    if args.per_stage:
        _report_stages(args.data / "test.npz")
    for seed in [int(s) for s in args.seeds.split(",")]:
        row = run_seed(args.data, seed, args.timesteps, args.bits, extra, args.epochs, args.keep, args.stages_from,
                       args.spikes)
        print(json.dumps({"name": args.name, **row, "set": extra, "opt": opts}), flush=True)


if __name__ == "__main__":
    main()
