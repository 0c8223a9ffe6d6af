"""The zoo (examples/zoo) end to end: ANN, conversion, tuning under Loihi limits, Lava, peers.

For each architecture in ``--archs`` (each trained by ``examples/zoo/train.py`` into
``--data``/ARCH), in parts that can run separately (``--parts``; a part whose result file
exists is skipped, so an interrupted run continues):

* ``convert``  snncompile's conversion with the defaults (``convert --calib calib.npz``),
               evaluated on the test set (all of it, or ``--test-size`` images) at every T
               of ``--convert-T``: accuracy and
               SynOps per sample (and the ANN's accuracy, from onnxruntime)
* ``tune``     ``convert --target loihi --bits 8 --fanin 64 -T T --train --val`` at every T
               of ``--tune-T`` and seed of ``--seeds``, the widths chosen by the loihi
               target's profile (max pools kept, as typed), tuned on ``--train-size``
               training and ``--val-size`` validation images for ``--epochs`` epochs;
               evaluated on the same test images (accuracy, SynOps per sample), then run on
               Lava on the first ``--lava-samples`` test images (bit-exact with the
               reference simulator, and its accuracy there); ``--[no-]joint-final``,
               ``--[no-]fit-thresholds``, ``--distill`` and ``--percentile-auto`` change the tuning as
               convert's options of those names do (``--weight-scale`` every part's
               conversion)
* ``peers``    SpikingJelly 2.0.0 with its defaults and with ``half_threshold`` and
               ``channel_wise``, and sinabs 3.1.3 with a normalization that keeps the ANN's
               function (bench/peers.py), at every T of ``--convert-T`` on the same test
               images, with the float accuracy of the network each peer converts (ReLU6 becomes
               ReLU for both; sinabs runs on chains only)

Results: one JSON per architecture and part in ``--out``; ``--table`` prints the markdown
table of everything there. Peers need ``make bench-peers`` (or the packages on PYTHONPATH).

    .venv/bin/python bench/zoo.py --data examples/zoo/data --out bench/results/zoo \\
        [--archs resnet,vgg] [--parts convert,tune,peers] [--seeds 0,1,2] [--epochs 4]
    .venv/bin/python bench/zoo.py --out bench/results/zoo --table
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO_ROOT, machine_info, write_json  # noqa: E402

sys.path.insert(0, str(REPO_ROOT / "examples/zoo"))
import models  # noqa: E402

from snncompile.app.compile import CompileRequest, compile_model  # noqa: E402
from snncompile.app.run import run_artifact  # noqa: E402
from snncompile.calibrate.statistics import onnx_forward  # noqa: E402
from snncompile.frontend.rewrite import maxpool_to_avgpool  # noqa: E402
from snncompile.measure.evaluate import evaluate_artifact  # noqa: E402
from snncompile.passes.convert import ConversionOptions  # noqa: E402

ARCHS = list(models.ARCHS)
PARTS = ("convert", "tune", "peers")


def loihi_settings(arch: str) -> dict[str, Any]:
    """What `convert --target loihi --bits 8 --fanin 64` is given on ``arch`` beyond what the
    target's profile chooses (membrane and input widths): nothing since max pools reach Loihi
    as they are (the command as typed keeps them)."""
    return {"maxpool": "keep"}


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t]


def _test(d: Path, work: Path, args) -> Path:
    """The test split, or its fixed subset of --test-size images."""
    if not args.test_size:
        return d / "test.npz"
    return _subset(d / "test.npz", work / f"test{args.test_size}.npz", args.test_size)


def part_convert(arch: str, d: Path, work: Path, args) -> dict[str, Any]:
    out = work / "convert"
    test = _test(d, work, args)
    Ts = _ints(args.convert_T)
    t0 = time.perf_counter()
    runs = []
    for T in Ts:  # one conversion per T: the bias calibration (on by default) fits its T
        compile_model(CompileRequest(model=str(d / "model.onnx"), out=str(out), calib=str(d / "calib.npz"),
                                     options=_options(args, timesteps=T), force=True))
        ev = evaluate_artifact(str(out), str(test), [T])
        runs += _runs(ev)
    res = {"test_samples": ev["samples"], "ann_accuracy": ev["ann_accuracy"], "ann_macs_per_sample": ev["ann_macs_per_sample"],
           "runs": runs, "seconds": round(time.perf_counter() - t0, 1)}
    model = onnx.load(str(d / "model.onnx"))
    rewritten, pools = maxpool_to_avgpool(model)
    if pools:  # what --maxpool conv costs before tuning: the float ANN (an average pool) and its conversion
        with np.load(test) as z:
            x, y = z["x"], z["y"]
        name = model.graph.output[0].name
        logits = np.concatenate([b[name] for b in onnx_forward(rewritten, model.graph.input[0].name, [name], x)])
        compile_model(CompileRequest(model=str(d / "model.onnx"), out=str(out), calib=str(d / "calib.npz"),
                                     options=_options(args, timesteps=max(Ts)), force=True, maxpool="conv"))
        ev = evaluate_artifact(str(out), str(test), Ts)
        res["maxpool_conv"] = {"ann_accuracy": float((logits.argmax(1) == y).mean()), "runs": _runs(ev)}
    return res


def _runs(ev: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"T": r["timesteps"], "accuracy": r["snn_accuracy"], "synops_per_sample": r["synops_per_sample"]}
            for r in ev.get("sweep", [ev])]


def _subset(src: Path, dst: Path, n: int) -> Path:
    """The first ``n`` samples of a shuffled split (fixed seed), written once."""
    if not dst.exists():
        with np.load(src) as z:
            x, y = z["x"], z["y"]
        idx = np.sort(np.random.default_rng(0).permutation(len(y))[:n])
        np.savez(dst, x=x[idx], y=y[idx])
    return dst


def part_tune(arch: str, d: Path, work: Path, args) -> dict[str, Any]:
    train = _subset(d / "train.npz", work / f"train{args.train_size}.npz", args.train_size)
    val = _subset(d / "val.npz", work / f"val{args.val_size}.npz", args.val_size)
    lava = _subset(d / "test.npz", work / f"lava{args.lava_samples}.npz", args.lava_samples)
    s = loihi_settings(arch)
    runs, tuning_record = [], {}
    for seed in _ints(args.seeds):
        for T in _ints(args.tune_T):
            out = work / f"tune_T{T}_s{seed}"
            t0 = time.perf_counter()
            opts = _options(args, timesteps=T, weight_bits=8)
            summary = compile_model(CompileRequest(
                model=str(d / "model.onnx"), out=str(out), target="loihi", calib=str(d / "calib.npz"),
                options=opts, fanin=64, train=str(train), val=str(val), epochs=args.epochs,
                patience=args.patience, seed=seed, force=True, maxpool=s["maxpool"],
                percentile_search=args.percentile_auto, **_tuning_choices(args)))
            tune_s = time.perf_counter() - t0
            tuning = json.loads((out / "compile.json").read_text())["tuning"]
            tuning_record = {k: tuning.get(k) for k in ("joint_final", "fit_thresholds", "distill", "percentiles")}
            tuning_record["weight_scale"] = opts.weight_scale
            ev = evaluate_artifact(str(out), str(_test(d, work, args)), [T])
            t0 = time.perf_counter()
            run = run_artifact(str(out), str(lava))
            runs.append({"T": T, "seed": seed, "accuracy": ev["snn_accuracy"], "test_samples": ev["samples"],
                         "synops_per_sample": ev["synops_per_sample"],
                         "tuning_epochs": summary["tuning"]["epochs"], "tune_seconds": round(tune_s, 1),
                         "profile": summary.get("profile"), "epoch_seconds": _epoch_seconds(tuning),
                         "val_accuracy": summary["tuning"].get("val_accuracy"),
                         "lava_samples": run["samples"], "lava_bit_exact": run["bit_exact"],
                         "lava_accuracy": run.get("accuracy"), "lava_seconds": round(time.perf_counter() - t0, 1),
                         "cores": run["stats"].get("cores")})
            print(f"{arch} tuned T={T} seed={seed}: {runs[-1]}", flush=True)
    return {"settings": s, "train_size": args.train_size, "val_size": args.val_size,
            "epochs": args.epochs, "patience": args.patience, "tuning": tuning_record, "runs": runs}


def _options(args, **given: Any) -> ConversionOptions:
    """Convert's conversion options with ``given``, and ``--weight-scale`` where given."""
    if args.weight_scale is not None:
        given["weight_scale"] = args.weight_scale
    return ConversionOptions(**given)


def _tuning_choices(args) -> dict[str, Any]:
    """The tuning switches given on the command line (the others keep convert's defaults)."""
    return {k: v for k in ("joint_final", "fit_thresholds", "distill") if (v := getattr(args, k)) is not None}


def _epoch_seconds(tuning: dict[str, Any]) -> dict[str, float]:
    """Mean seconds of a training epoch per stage (its layer), from the run's history (each
    record's seconds count from its stage's start; epoch 0 is the stage's set-up)."""
    out: dict[str, float] = {}
    for st in tuning["stages"]:
        recs = [h for h in tuning["history"] if h["stage"] == st["stage"]]
        if len(recs) > 1:
            out[f"{st['stage']}:{st['layer']}"] = round((recs[-1]["seconds"] - recs[0]["seconds"]) / (len(recs) - 1), 2)
    return out


def part_peers(arch: str, d: Path, work: Path, args) -> dict[str, Any]:
    import peers

    model = models.build(arch)
    model.load_state_dict(torch.load(d / "model.pt", weights_only=True))
    model = peers.relu6_as_relu(model.eval())
    with np.load(d / "calib.npz") as z:
        calib_x = z["x"]
    with np.load(_test(d, work, args)) as z:
        x, y = z["x"], z["y"]
    Ts = _ints(args.convert_T)

    def float_acc(m: torch.nn.Module) -> float:
        with torch.no_grad():
            return float(np.mean([(m(torch.from_numpy(x[i:i + 1000])).argmax(1).numpy() == y[i:i + 1000]).mean()
                                  for i in range(0, len(x), 1000)]))

    res: dict[str, Any] = {"test_samples": len(y), "float_accuracy_relu": float_acc(model), "versions": {}}
    for name, kw in (("spikingjelly", {}), ("spikingjelly_half_channel", {"half_threshold": True,
                                                                           "channel_wise": True})):
        t0 = time.perf_counter()
        try:
            res[name] = {str(T): a for T, a in peers.spikingjelly(model, calib_x, x, y, Ts, **kw).items()}
        except Exception as exc:  # the peer's own failure on this model: reported, not hidden
            res[name] = {"failed": f"{type(exc).__name__}: {exc}"}
            continue
        res[name]["seconds"] = round(time.perf_counter() - t0, 1)
    res["versions"]["spikingjelly"] = peers.version("spikingjelly")
    try:
        chain = peers.chain_layers(model, calib_x[:64])
    except ValueError as exc:
        res["sinabs"] = {"not_run": str(exc)}
    else:
        res["sinabs_normalized_float_accuracy"] = float_acc(peers.normalize_chain(chain, calib_x))
        t0 = time.perf_counter()
        res["sinabs"] = {str(T): a for T, a in peers.sinabs(model, calib_x, x, y, Ts).items()}
        res["sinabs"]["seconds"] = round(time.perf_counter() - t0, 1)
        res["versions"]["sinabs"] = peers.version("sinabs")
    return res


RUNNERS = {"convert": part_convert, "tune": part_tune, "peers": part_peers}


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def table(out: Path) -> str:
    """The markdown table of every result in ``out``."""
    rows = ["| network | ANN | conversion T = 4 / 8 / 16 / 32 | SynOps/sample (conv., T = 8) "
            "| tuned (loihi, 8-bit, fan-in 64) T = 4 / 8 | SynOps/sample (tuned, T = 8) | bit-exact on Lava "
            "| SpikingJelly T = 4 / 8 / 16 / 32 | SJ half-threshold + channel-wise | sinabs |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for arch in ARCHS:
        r = {p: json.loads((out / f"{arch}_{p}.json").read_text()) if (out / f"{arch}_{p}.json").exists()
             else None for p in PARTS}
        if not any(r.values()):
            continue
        c, t, p = r["convert"], r["tune"], r["peers"]
        ann = _fmt(c["ann_accuracy"]) if c else "-"
        conv = " / ".join(_fmt(x["accuracy"]) for x in c["runs"]) if c else "-"
        syn = next((f"{x['synops_per_sample']:.3g}" for x in c["runs"] if x["T"] == 8), "-") if c else "-"
        tuned = lava = tsyn = "-"
        if t:
            by_T: dict[int, list[float]] = {}
            for x in t["runs"]:
                by_T.setdefault(x["T"], []).append(x["accuracy"])
            tuned = " / ".join(f"{np.mean(v):.4f}" + (f" (n={len(v)})" if len(v) > 1 else "")
                               for _, v in sorted(by_T.items()))
            exact = [x["lava_bit_exact"] for x in t["runs"]]
            lava = (f"{sum(exact)} of {len(exact)} runs x {t['runs'][0]['lava_samples']} images"
                    if t["runs"] else "-")
            tsyn = next((f"{x['synops_per_sample']:.3g}" for x in t["runs"] if x["T"] == 8), "-")
        sj = sjh = sb = "-"
        if p:
            def seq(d):
                return " / ".join(_fmt(d[k]) for k in d if k.isdigit())
            def peer(d):
                return "fails: " + d["failed"].split(":")[0] if "failed" in d else seq(d)
            sj, sjh = peer(p["spikingjelly"]), peer(p["spikingjelly_half_channel"])
            sb = seq(p["sinabs"]) if "not_run" not in p["sinabs"] else "not run (not a chain)"
        rows.append(f"| {arch} | {ann} | {conv} | {syn} | {tuned} | {tsyn} | {lava} | {sj} | {sjh} | {sb} |")
        if c and "maxpool_conv" in c:  # the rewritten network, before tuning
            m = c["maxpool_conv"]
            rows.append(f"| {arch}, `--maxpool conv`, untuned | {_fmt(m['ann_accuracy'])} (float, rewritten) | "
                        + " / ".join(_fmt(x["accuracy"]) for x in m["runs"]) + " | "
                        + next((f"{x['synops_per_sample']:.3g}" for x in m["runs"] if x["T"] == 8), "-")
                        + " | | | | | | |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=REPO_ROOT / "examples/zoo/data")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench/results/zoo")
    p.add_argument("--archs", default=",".join(ARCHS))
    p.add_argument("--parts", default=",".join(PARTS))
    p.add_argument("--convert-T", default="4,8,16,32")
    p.add_argument("--tune-T", default="4,8")
    p.add_argument("--seeds", default="0")
    p.add_argument("--epochs", type=int, default=4, help="tuning epoch budget")
    p.add_argument("--patience", type=int, default=2)
    p.add_argument("--train-size", type=int, default=5000)
    p.add_argument("--val-size", type=int, default=1000)
    p.add_argument("--lava-samples", type=int, default=200)
    p.add_argument("--test-size", type=int, default=0,
                   help="evaluate on this many test images (a fixed random subset); 0: all")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--joint-final", action=argparse.BooleanOptionalAction, default=None,
                   help="tuning: the last stage trains every layer (default: convert's)")
    p.add_argument("--fit-thresholds", action=argparse.BooleanOptionalAction, default=None,
                   help="tuning: re-derived thresholds fitted to T (default: convert's)")
    p.add_argument("--distill", type=float, default=None, metavar="SHARE",
                   help="tuning: share of the loss distilled from the float ANN (default: convert's)")
    p.add_argument("--weight-scale", choices=("channel", "layer"), default=None,
                   help="what the weight width spans (default: convert's)")
    p.add_argument("--percentile-auto", action="store_true",
                   help="tuning: each layer's threshold percentile chosen on validation (--percentile auto)")
    p.add_argument("--table", action="store_true", help="only print the table of --out")
    args = p.parse_args(argv)
    if args.table:
        print(table(args.out))
        return 0
    torch.set_num_threads(args.threads)
    write_json(args.out / "machine.json", machine_info())
    for arch in args.archs.split(","):
        d = args.data / arch
        for part in args.parts.split(","):
            path = args.out / f"{arch}_{part}.json"
            if path.exists():
                continue
            work = args.out / "work" / arch
            work.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            res = RUNNERS[part](arch, d, work, args)
            res["seconds_total"] = round(time.perf_counter() - t0, 1)
            res["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            write_json(path, res)
            print(f"{arch} {part}: {json.dumps(res)[:400]}", flush=True)
    print(table(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
