"""Accuracy against T: ANN, primitive conversion, PTL under 8-bit / fan-in 64, and the peers.

On one trained example (digits or Fashion-MNIST, the folder its ``train.py`` wrote), for every
T in ``--timesteps``:

* ``ANN``           the ONNX model in onnxruntime (the same at every T)
* ``convert``       snncompile's primitive conversion at that T (16-bit weights, no limits)
* ``PTL@Tt``        snncompile tuned with PTL at T = Tt (``--tune-at``) under ``--bits`` and
                    ``--fanin``, then simulated at every T by the reference simulator
* ``SpikingJelly``  spikingjelly 2.0.0 ``FXConverter(recipe=RateCodingRecipe(...))`` on the
                    same torch model (float, no hardware limits)
* ``sinabs``        sinabs 3.1.3 ``from_model`` on the same torch model, weights normalised by
                    sinabs' own ``normalize_weights`` (float, no hardware limits)

The peers run on the same trained weights (rebuilt from the ONNX initializers) and the same
test split; see bench/peers.py. Tuning wall time is compared with the ANN's own training time
(``train_seconds`` in the example's ann_metrics.json, both with one torch thread).

Usage (writes bench/results/ptl_accuracy_<name>.json and prints markdown tables)::

    .venv/bin/python bench/ptl_accuracy.py --example digits --data DIR [--tune-at 8] [--epochs 60]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO_ROOT, machine_info, write_json  # noqa: E402

from snncompile.passes.convert import ConversionOptions  # noqa: E402
from snncompile.app.compile import CompileRequest, compile_model  # noqa: E402
from snncompile.measure.evaluate import evaluate_artifact

EXAMPLES = {"digits": ("examples/digits/train.py", "digits_cnn.onnx", ("pool", "stride")),
            "fashion_mnist": ("examples/fashion_mnist/train.py", "fmnist_cnn.onnx", (None,))}


def load_example(name: str) -> Any:
    """The example's train.py as a module (for its build_model)."""
    path = REPO_ROOT / EXAMPLES[name][0]
    spec = importlib.util.spec_from_file_location(f"{name}_train", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def torch_model(example: str, onnx_path: Path) -> torch.nn.Module:
    """The trained torch model: the example's architecture with the ONNX file's weights
    (initializers are named after the torch layers, e.g. ``conv1.weight``)."""
    import onnx
    from onnx import numpy_helper

    state = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy())
             for i in onnx.load(str(onnx_path)).graph.initializer}
    mod = load_example(example)
    for arch in EXAMPLES[example][2]:
        model = mod.build_model(arch) if arch else mod.build_model()
        if set(model.state_dict()) == set(state):
            model.load_state_dict(state)
            return model.eval()
    raise SystemExit(f"{onnx_path}: its weights fit none of the {example} architectures")


def stratified_subset(src: Path, dst: Path, n: int | None, seed: int) -> Path:
    """The first ``n`` // classes samples of each class of ``src`` (in a seeded random order),
    written to ``dst``; ``src`` itself when ``n`` is None or not smaller than it."""
    d = np.load(src)
    x, y = d["x"], d["y"]
    if n is None or n >= len(y):
        return src
    order = np.random.default_rng(seed).permutation(len(y))
    classes = np.unique(y)
    keep = np.sort(np.concatenate([order[y[order] == c][:n // len(classes)] for c in classes]))
    with open(dst, "wb") as f:
        np.savez(f, x=x[keep], y=y[keep])
    return dst


def time_ann_training(example: str, onnx_path: Path, seed: int, epochs: int) -> float:
    """Seconds the example's own training loop takes here (the digits example does not record
    it): same data split, epochs and architecture as the trained model, one torch thread."""
    mod = load_example(example)
    arch = "stride" if "conv3.weight" in torch_model(example, onnx_path).state_dict() else "pool"
    splits = mod.load_splits(seed)
    t0 = time.perf_counter()
    mod.train(splits, seed, epochs, arch)
    return round(time.perf_counter() - t0, 1)


def compile_and_score(data: Path, onnx_name: str, out: Path, T: int, eval_T: list[int], seed: int,
                      bits: int = 16, fanin: int | None = None, tune: dict | None = None) -> dict:
    """Compile (convert, or tune when ``tune`` is given) and score on the test split. ``tune``
    may name ``train`` / ``val`` files other than the example's (subsets)."""
    req = CompileRequest(model=str(data / onnx_name), out=str(out), calib=str(data / "calib.npz"),
                         seed=seed, force=True, fanin=fanin,
                         options=ConversionOptions(timesteps=T, weight_bits=bits))
    if tune:
        req.train, req.val, req.method = str(tune["train"]), str(tune["val"]), "ptl"
        req.epochs, req.patience, req.device = tune["epochs"], tune["patience"], tune["device"]
        req.report = lambda line: print("   ", line, flush=True)
    else:
        req.method = "none"
    t0 = time.perf_counter()
    compile_model(req)
    seconds = time.perf_counter() - t0
    ev = evaluate_artifact(str(out), str(data / "test.npz"), timesteps=eval_T)
    runs = {r["timesteps"]: r for r in ev.get("sweep", [ev])}
    return {"seconds": round(seconds, 1), "ann_accuracy": ev["ann_accuracy"],
            "accuracy": {T_: runs[T_]["snn_accuracy"] for T_ in eval_T},
            "max_weight_bits": ev["max_weight_bits"], "max_fanin": ev["max_fanin"],
            "tuning": ev.get("tuning")}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--example", choices=sorted(EXAMPLES), required=True)
    p.add_argument("--data", type=Path, required=True, help="the folder the example's train.py wrote")
    p.add_argument("--timesteps", default="2,4,8,16")
    p.add_argument("--tune-at", default="8", help="T values to tune PTL at (comma list; empty: none)")
    p.add_argument("--bits", type=int, default=8)
    p.add_argument("--fanin", type=int, default=64)
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--patience", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where PTL tunes")
    p.add_argument("--peers", default="spikingjelly,sinabs", help="comma list; empty: none")
    p.add_argument("--train-subset", type=int, default=None,
                   help="tune on this many training samples (stratified; default: all)")
    p.add_argument("--val-subset", type=int, default=None,
                   help="validate on this many validation samples (stratified; default: all)")
    p.add_argument("--parts", default="convert,peers,ptl",
                   help="what to run (comma list of convert, peers, ptl), e.g. to split a long run")
    p.add_argument("--ann-seconds", type=float, default=None,
                   help="ANN training time to compare with (default: train_seconds of ann_metrics.json)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--report", type=Path, default=None,
                   help="only print the tables of a saved result (JSON written by this script)")
    args = p.parse_args(argv)
    if args.report:
        saved = json.loads(args.report.read_text())
        saved["meta"]["ann_train_seconds"] = args.ann_seconds or saved["meta"]["ann_train_seconds"]
        print(markdown(saved, [int(t) for t in args.timesteps.split(",")]))
        return saved
    torch.set_num_threads(1)
    Ts = [int(t) for t in args.timesteps.split(",")]
    tune_at = [int(t) for t in args.tune_at.split(",") if t]
    onnx_name = EXAMPLES[args.example][1]
    out_json = args.out or REPO_ROOT / f"bench/results/ptl_accuracy_{args.example}.json"
    metrics = json.loads((args.data / "ann_metrics.json").read_text())
    result: dict[str, Any] = {
        "meta": {"command": "python bench/ptl_accuracy.py " + " ".join(sys.argv[1:] if argv is None else argv),
                 "machine": machine_info(), "time": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                 "ann_train_seconds": args.ann_seconds or metrics.get("train_seconds"), "ann_metrics": metrics},
        "rows": {}}

    if not result["meta"]["ann_train_seconds"] and args.example == "digits":
        result["meta"]["ann_train_seconds"] = time_ann_training(args.example, args.data / onnx_name,
                                                                   metrics["seed"], metrics["epochs"])

    def save(row: str, value: dict) -> None:
        result["rows"][row] = value
        print(json.dumps({row: value if "tuning" not in value else
                          {k: v for k, v in value.items() if k != "tuning"}}), flush=True)
        write_json(out_json, result)  # after every row: a cut-off run keeps what it measured

    with tempfile.TemporaryDirectory() as tmp:
        parts = set(args.parts.split(","))
        for T in (Ts if "convert" in parts else []):
            r = compile_and_score(args.data, onnx_name, Path(tmp) / f"convert{T}", T, [T], args.seed)
            if "ANN" not in result["rows"]:
                save("ANN", {"accuracy": {T_: r["ann_accuracy"] for T_ in Ts}})
            save(f"convert@T{T}", r)
        for name in [s for s in args.peers.split(",") if s and "peers" in parts]:
            import peers
            model = torch_model(args.example, args.data / onnx_name)
            test, calib = np.load(args.data / "test.npz"), np.load(args.data / "calib.npz")
            t0 = time.perf_counter()
            acc = peers.RUNNERS[name](model, calib["x"], test["x"], test["y"], Ts)
            save(name, {"accuracy": acc, "seconds": round(time.perf_counter() - t0, 1),
                        "version": peers.version(name)})
        tr = stratified_subset(args.data / "train.npz", Path(tmp) / "train_sub.npz", args.train_subset, 0)
        va = stratified_subset(args.data / "val.npz", Path(tmp) / "val_sub.npz", args.val_subset, 0)
        result["meta"]["tuning_data"] = {"train": int(len(np.load(tr)["y"])), "val": int(len(np.load(va)["y"]))}
        for T in (tune_at if "ptl" in parts else []):
            r = compile_and_score(args.data, onnx_name, Path(tmp) / f"ptl{T}", T, Ts, args.seed,
                                  bits=args.bits, fanin=args.fanin,
                                  tune={"epochs": args.epochs, "patience": args.patience,
                                        "train": tr, "val": va, "device": args.device})
            ann_s = result["meta"]["ann_train_seconds"]
            if ann_s:
                r["tuning_over_ann_training"] = round(r["seconds"] / ann_s, 2)
            save(f"PTL@T{T}", r)
    print(markdown(result, Ts))
    return result


def _by_T(acc: dict) -> dict[int, float]:
    """Accuracy per T with int keys (JSON turns them into strings)."""
    return {int(k): v for k, v in acc.items()}


def markdown(result: dict, Ts: list[int]) -> str:
    """The accuracy table (rows x T) and the tuning-time line."""
    rows = result["rows"]
    lines = ["| method | " + " | ".join(f"T={T}" for T in Ts) + " |", "|---" * (len(Ts) + 1) + "|"]
    conv = {T: _by_T(rows[f"convert@T{T}"]["accuracy"])[T] for T in Ts if f"convert@T{T}" in rows}
    named = [("ANN", rows.get("ANN", {}).get("accuracy", {}))]
    named.append(("primitive conversion (16-bit, no limits)", conv))
    named += [(f"{k} (8-bit, fan-in 64)" if k.startswith("PTL") else k, v["accuracy"])
              for k, v in rows.items() if k.startswith("PTL")]
    named += [(k, v["accuracy"]) for k, v in rows.items() if k in ("spikingjelly", "sinabs")]
    for label, acc in named:
        acc = _by_T(acc)
        lines.append(f"| {label} | " + " | ".join(f"{acc[T]:.4f}" if T in acc else "-" for T in Ts) + " |")
    ann_s = result["meta"]["ann_train_seconds"]
    for k, v in rows.items():
        if k.startswith("PTL"):
            epochs = (v.get("tuning") or {}).get("epochs")
            ratio = f"{v['seconds'] / ann_s:.2f}x" if ann_s else "-"
            lines.append(f"\n{k}: convert + tune {v['seconds']:.0f} s ({epochs} epochs); "
                         f"ANN training {ann_s} s; ratio {ratio}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
