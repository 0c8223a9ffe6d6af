"""The tuning methods side by side: none / ptl / tandem / ltl / stdb at several time windows.

Each (method, T) compiles the same trained model with the same calibration, limits
(--bits, --fanin), seed, data and epoch budget, and is scored by the reference simulator on
the held-out test split (what every backend computes). Reported per row: test accuracy,
SynOps per sample, epochs run and wall time, and when the kept weights were found
(``epochs_to_best`` / ``seconds_to_best``: training epochs and seconds up to the epoch whose
weights the run keeps, over all its stages). For ltl, the validation accuracy after each
epoch of its spiking stage, to check the paper's "about 5 epochs".

The data folder holds one ``*.onnx`` model and ``train/val/test/calib.npz`` (what
``examples/digits/train.py`` writes; another dataset's example writes the same files).

Usage (writes the JSON after every row, then prints a markdown table)::

    .venv/bin/python bench/methods.py --data examples/digits/data --timesteps 2,4,8,16 \\
        --methods none,ptl,tandem,ltl,stdb --epochs 30 --out bench/results/methods_digits.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from snncompile.passes.convert import ConversionOptions
from snncompile.fsutil import atomic_write_text
from snncompile.app.compile import CompileRequest, compile_model
from snncompile.measure.evaluate import evaluate_artifact


def _model(data: Path) -> Path:
    models = sorted(data.glob("*.onnx"))
    if len(models) != 1:
        raise SystemExit(f"{data} must hold exactly one .onnx model, found {len(models)}")
    return models[0]


def _to_best(history: list[dict], stages: list[dict]) -> tuple[int, float]:
    """Training epochs and seconds up to the epoch whose weights the run keeps (the best
    epoch of the last stage), summed over the stages."""
    epochs, seconds = 0, 0.0
    for s in stages:
        recs = [h for h in history if h["stage"] == s["stage"]]
        if s is stages[-1]:
            best = s["best_epoch"]
            return epochs + best, round(seconds + recs[best]["seconds"], 1)
        epochs += len(recs) - 1
        seconds += recs[-1]["seconds"]
    return epochs, round(seconds, 1)


def subsets(data: Path, args: argparse.Namespace, work: Path) -> dict[str, Path]:
    """The split files, cut to their first ``--max-SPLIT`` samples where asked (to size a
    run on a large dataset to the machine)."""
    files = {}
    for split in ("train", "val", "test"):
        limit = getattr(args, f"max_{split}")
        files[split] = data / f"{split}.npz"
        if limit:
            with np.load(files[split]) as f:
                x, y = f["x"][:limit], f["y"][:limit]
            files[split] = work / f"{split}-{limit}.npz"
            np.savez(files[split], x=x, y=y)
    return files


def run_one(data: Path, files: dict[str, Path], method: str, T: int, args: argparse.Namespace,
            work: Path) -> dict:
    out = work / f"{method}-T{T}"
    req = CompileRequest(model=str(_model(data)), out=str(out), calib=str(data / "calib.npz"),
                         seed=args.seed, options=ConversionOptions(timesteps=T, weight_bits=args.bits),
                         fanin=args.fanin or None, method=method, force=True)
    if method != "none":  # (--method none would warn that it ignores the tuning options)
        req.train, req.val = str(files["train"]), str(files["val"])
        req.epochs, req.patience = args.epochs, args.patience
    t0 = time.perf_counter()
    compile_model(req)
    seconds = round(time.perf_counter() - t0, 1)
    ev = evaluate_artifact(str(out), str(files["test"]))
    row = {"method": method, "T": T, "ann_accuracy": ev["ann_accuracy"], "snn_accuracy": ev["snn_accuracy"],
           "synops_per_sample": round(ev["synops_per_sample"]), "ann_macs": ev.get("ann_macs_per_sample"),
           "max_weight_bits": ev["max_weight_bits"], "max_fanin": ev["max_fanin"],
           "compile_seconds": seconds, "epochs": 0, "epochs_to_best": 0, "seconds_to_best": 0.0}
    if method != "none":
        info = json.loads((out / "compile.json").read_text())["tuning"]
        row["epochs"] = info["epochs"]
        row["epochs_to_best"], row["seconds_to_best"] = _to_best(info["history"], info["stages"])
        row["val_accuracy"] = info["stages"][-1]["best"].get("val_accuracy")
        if method == "ltl":
            last = info["stages"][-1]["stage"]
            row["ltl_val_by_epoch"] = [h["val_accuracy"] for h in info["history"] if h["stage"] == last]
    return row


def wide_tables(rows: list[dict]) -> str:
    """The rows as the docs show them: one line per method with its accuracy, SynOps, epochs
    and seconds to best at every T (best accuracy per T and fewest SynOps of a tuned method
    in bold), then LTL's validation accuracy by epoch of its student stage."""
    ts = sorted({r["T"] for r in rows})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    at = {(r["method"], r["T"]): r for r in rows}
    top = {T: max(r["snn_accuracy"] for r in rows if r["T"] == T) for T in ts}
    low = {T: min((r["synops_per_sample"] for r in rows if r["T"] == T and r["method"] != "none"), default=None)
           for T in ts}

    def cell(m: str, T: int, key: str) -> str:
        r = at.get((m, T))
        if r is None:
            return "n/a"
        v = r[key]
        if key == "snn_accuracy":
            return f"**{v:.4f}**" if v == top[T] else f"{v:.4f}"
        if m == "none" and key in ("epochs_to_best", "seconds_to_best"):
            return "-"
        return f"**{v}**" if key == "synops_per_sample" and v == low[T] and m != "none" else f"{v}"

    slash = " / ".join(str(T) for T in ts)
    out = ["| method | " + " | ".join(f"T={T} acc" for T in ts) + f" | SynOps/sample T={slash} | "
           f"epochs to best (T={slash}) | s to best (T={slash}) |", "|---" * (len(ts) + 4) + "|"]
    for m in methods:
        out.append(f"| {m} | " + " | ".join(cell(m, T, "snn_accuracy") for T in ts) + " | "
                   + " | ".join(" / ".join(cell(m, T, k) for T in ts)
                                for k in ("synops_per_sample", "epochs_to_best", "seconds_to_best")) + " |")
    ltl = [r for r in rows if r["method"] == "ltl" and r.get("ltl_val_by_epoch")]
    if ltl:
        out += ["", "| T | LTL student validation accuracy by epoch (0 = converted) | best (epoch) |", "|---|---|---|"]
        for r in ltl:
            v = r["ltl_val_by_epoch"]
            best = max(range(len(v)), key=lambda i: v[i])
            out.append(f"| {r['T']} | {' / '.join(f'{a:.4f}' for a in v)} | {v[best]:.4f} ({best}) |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path("examples/digits/data"))
    p.add_argument("--methods", default="none,ptl,tandem,ltl,stdb")
    p.add_argument("--timesteps", default="2,4,8,16")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--patience", type=int, default=6)
    p.add_argument("--bits", type=int, default=8)
    p.add_argument("--fanin", type=int, default=64, help="0: no fan-in limit")
    for split in ("train", "val", "test"):
        p.add_argument(f"--max-{split}", type=int, default=0, help=f"use the first N {split} samples (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("bench/results/methods.json"))
    p.add_argument("--tables-from", type=Path, metavar="JSON",
                   help="print the tables of an earlier run's results (--out file) and exit")
    args = p.parse_args(argv)
    if args.tables_from:
        print(wide_tables(json.loads(args.tables_from.read_text())["rows"]))
        return
    torch.set_num_threads(args.threads)
    meta = {"command": "python bench/methods.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "machine": f"{platform.machine()}, {os.cpu_count()} cpus (shared), torch threads {args.threads}",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "data": str(args.data),
            "epochs": args.epochs, "patience": args.patience, "bits": args.bits, "fanin": args.fanin,
            "seed": args.seed, "max_samples": {k: getattr(args, f"max_{k}") for k in ("train", "val", "test")}}
    rows: list[dict] = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        files = subsets(args.data, args, Path(tmp))
        for T in [int(t) for t in args.timesteps.split(",")]:
            for method in args.methods.split(","):
                r = run_one(args.data, files, method, T, args, Path(tmp))
                print(json.dumps(r), flush=True)
                rows.append(r)
                atomic_write_text(args.out, json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"\n{meta['data']}: --bits {args.bits} --fanin {args.fanin}, --epochs {args.epochs} "
          f"--patience {args.patience}, seed {args.seed}; ANN test accuracy {rows[0]['ann_accuracy']:.4f}")
    print("\n| method | T | SNN test acc | SynOps/sample | epochs run | epochs to best | s to best | compile s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['T']} | {r['snn_accuracy']:.4f} | {r['synops_per_sample']} | {r['epochs']} | "
              f"{r['epochs_to_best']} | {r['seconds_to_best']} | {r['compile_seconds']} |")


if __name__ == "__main__":
    main()
