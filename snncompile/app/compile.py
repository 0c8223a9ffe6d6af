"""The user-level jobs: compile a model to an output directory, evaluate a compiled one.

The CLI is a thin layer over these functions; scripts and tests can call them directly.
"""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch

from ..targets.artifact import read_artifact, write_artifact
from ..calibrate.statistics import activation_scales, onnx_forward, weight_bounds
from ..passes.convert import ConversionOptions, convert
from ..data import Dataset, load_npz
from ..errors import DataError, ModelError, SnnCompileError, UsageError
from ..frontend import import_onnx, load_onnx
from ..ir import IFNode
from ..ir.structure import ann_macs, populations
from ..targets.api import available_backends, get_backend
from ..sim.simulator import simulate
from ..targets.select import SIM, check_fit, lower_into, resolve_target, target_info

log = logging.getLogger("snncompile")
TARGETS = (SIM,)  # built in; backend plugins add theirs (see snncompile.targets)


@dataclass
class CompileRequest:
    """Everything `snncompile convert` takes."""

    model: str
    out: str
    target: str = "sim"
    calib: str | None = None
    norm: str = "percentile"
    percentile: float = 99.9
    percentile_search: bool = False  # --percentile auto: tuning picks each layer's on --val
    output: str | None = None
    seed: int = 0
    force: bool = False
    options: ConversionOptions = ConversionOptions()
    target_options: dict[str, str] = field(default_factory=dict)  # --target-option KEY=VALUE
    # Constraints and tuning (progressive tandem learning); see snncompile/tandem.
    fanin: int | None = None
    prune_ahead: int = 99          # stages a layer's fan-in mask comes before it spikes
    fanin_mode: str = "magnitude"  # which weights a neuron keeps (passes.constrain.FANIN_MODES)
    train: str | None = None
    val: str | None = None
    method: str = "ptl"            # a name in snncompile.tune.methods, or none (conversion only)
    epochs: int = 60
    patience: int = 6
    joint_final: bool = False      # ptl: the last stage trains every layer, not only the output
    count_aware: bool = True       # ptl: layers not spiking yet pass their future count's value
    distill: float = 0.0           # ptl/tandem: share of the loss matching the float ANN's outputs
    distill_temperature: float = 4.0
    batch_size: int = 64
    device: str = "cpu"
    resume: bool = False
    progress: bool = False
    report: Any = None             # callable(str) for one line per epoch, or None
    on_stage_end: Any = None       # callable(stage) after each stage's checkpoint (tests)
    # --timesteps auto: snncompile.calibrate.timesteps.AutoTOptions (T chosen on --val; options.timesteps
    # is then only a placeholder)
    auto_timesteps: Any = None
    # Options of the surrogate-gradient methods (ltl, stdb); None: the method's default.
    surrogate: str | None = None
    surrogate_alpha: float | None = None
    surrogate_beta: float | None = None
    balance_scale: float | None = None
    # The options the user set (the CLI passes the flags on its command line); None: those
    # whose value differs from the default. Options the method ignores are reviewed on these.
    explicit: frozenset[str] | None = None


def seed_everything(seed: int) -> None:
    """Make a run reproducible from ``--seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def compile_model(req: CompileRequest) -> dict[str, Any]:
    """Import, calibrate, convert, (constrain and tune), write; returns a summary (also
    stored in compile.json).

    All inputs are checked before the output directory is created; a tuning run keeps
    per-stage checkpoints in OUT/checkpoints (see snncompile.tune.checkpoint)."""
    from ..tune.checkpoint import DIRNAME, CheckpointDir

    backend = resolve_target(req.target, req.target_options)
    req.options.check()
    if req.auto_timesteps is not None and not req.val:
        raise UsageError("--timesteps auto needs --val: T is chosen by accuracy on validation data",
                         "pass --val VAL.npz (labelled), or give --timesteps a number")
    topts, notes = _check_tuning(req)
    training = topts is not None
    for note in notes:
        log.warning(note)
    ckpt_dir = os.path.join(req.out, DIRNAME)
    if os.path.exists(req.out) and not req.force:
        if not (req.resume and training and os.path.isdir(ckpt_dir)):
            has_ckpt = os.path.isdir(ckpt_dir)
            raise UsageError(f"output directory '{req.out}' already exists"
                             + (" and holds checkpoints of an earlier tuning run" if has_ckpt else ""),
                             "pass --resume to continue that run, or --force to start over" if has_ckpt
                             else "choose another -o, or pass --force to replace it")
    seed_everything(req.seed)
    t0 = time.perf_counter()
    model = load_onnx(req.model)
    imported = import_onnx(model, output=req.output)
    ann = imported.graph
    ann.meta["source"] = os.path.basename(req.model)
    calib_data = load_npz(req.calib, ann.input.shape, need_labels=False) if req.calib else None
    train_data = val_data = None
    if training:
        train_data = load_npz(req.train, ann.input.shape, need_labels=True)
        val_data = load_npz(req.val, ann.input.shape, need_labels=True)
        out_shape = tuple(ann[ann.outputs[0]].shape)
        _check_targets(train_data, out_shape)
        _check_targets(val_data, out_shape, validation=True)
        if train_data.is_classification != val_data.is_classification:
            raise DataError(f"'{req.train}' and '{req.val}' disagree on the task: one has integer "
                            "labels, the other float targets")
    elif req.val:  # --timesteps auto without tuning
        val_data = load_npz(req.val, ann.input.shape, need_labels=True)
        _check_targets(val_data, tuple(ann[ann.outputs[0]].shape), validation=True)
    t_import = time.perf_counter() - t0
    if calib_data is not None:
        calib = activation_scales(model, ann, calib_data.x, req.norm, req.percentile, seed=req.seed)
    else:
        calib = weight_bounds(ann)
    snn = convert(ann, calib, req.options)
    warnings = list(notes) + list(imported.warnings) + list(calib.warnings)
    tsearch = None
    if req.auto_timesteps is not None:  # see snncompile/calibrate/timesteps.py
        from ..calibrate.timesteps import TimestepSearch, with_timesteps

        tsearch = TimestepSearch(req.auto_timesteps, model, ann, val_data)
        if training:  # tune at the smallest T the converted network meets, else the largest
            first = tsearch.run(snn, "conversion")
            T = first.chosen or max(req.auto_timesteps.candidates)
            snn, req = with_timesteps(snn, T), replace(req, options=replace(req.options, timesteps=T))
    tuning: dict[str, Any] | None = None
    if training or req.fanin:
        from ..passes.constrain import violations
        from ..tune.methods import get_method
        from ..tune.model import TandemNet

        net = TandemNet(snn, bits=req.options.weight_bits, fanin=req.fanin,
                        prune_lead=req.prune_ahead if training else 0, fanin_mode=req.fanin_mode)
        if training and backend is not None:  # fail before tuning, not after: the limits the
            early = TandemNet(snn, bits=req.options.weight_bits, fanin=req.fanin)  # target sets
            early.set_stage(early.n_stages)
            check_fit(backend, early.to_graph())
        if training:
            from ..tune.runtime import distributed as ddp

            ddp.init_from_env(topts.device)
            ckpt = CheckpointDir(ckpt_dir)
            if ddp.rank() == 0:
                ckpt.start(_run_fingerprint(req, topts), resume=req.resume)
            ddp.barrier()
            res = get_method(topts.method).train(
                net, train_data, val_data, topts, checkpoints=ckpt, report=req.report,
                on_stage_end=req.on_stage_end, progress=req.progress,
                calib_x=calib_data.x if calib_data is not None else None)
            tuning = {"method": topts.method, "epochs_budget": topts.epochs, "epochs": res.epochs,
                      "world_size": res.world_size,
                      "patience": topts.patience, "joint_final": topts.joint_final,
                      "count_aware": topts.count_aware,
                      "distill": topts.distill, "distill_temperature": topts.distill_temperature,
                      "seconds": res.seconds, "stages": res.stages,
                      "history": res.history}
            if topts.percentile_search:  # --percentile auto: what each layer got
                tuning["percentiles"] = {layer: rec["chosen"] for st in res.stages
                                         for layer, rec in st.get("percentiles", {}).items()}
        else:
            net.set_stage(net.n_stages)
            msg = (f"--fanin {req.fanin} pruned {_pruned_share(net):.0%} of the weights without "
                   "fine-tuning: accuracy will suffer; pass --train and --val to recover it")
            log.warning(msg)
            warnings.append(msg)
        snn = net.to_graph()
        problems = violations(snn, bits=req.options.weight_bits, fanin=req.fanin)
        if problems:  # our bug, not the user's: refuse to write a graph that breaks the limits
            raise ModelError("the tuned graph breaks the requested limits: " + "; ".join(problems))
    if tsearch is not None:  # the final network, tuned or not, at the smallest T that meets
        final = tsearch.run(snn, "tuned" if training else "conversion")
        if final.chosen is None:
            raise tsearch.not_found(final, tuned=training, calibrated=calib_data is not None)
        snn = with_timesteps(snn, final.chosen)
        req = replace(req, options=replace(req.options, timesteps=final.chosen))
    if backend is not None:
        check_fit(backend, snn)  # every violation at once, before anything is written
    info = {
        "source": os.path.abspath(req.model), "target": req.target,
        "backend": target_info(backend, req.target), "seed": req.seed,
        "options": asdict(req.options), "normalization": calib.method,
        "calibration_samples": int(calib_data.x.shape[0]) if calib_data is not None else 0,
        "lam": {k: v.tolist() for k, v in calib.lam.items()},
        "constraints": {"bits": req.options.weight_bits, "fanin": req.fanin},
        "warnings": warnings,
        "import_seconds": round(t_import, 3),
        "convert_seconds": round(time.perf_counter() - t0, 3),
    }
    if tuning is not None:
        info["tuning"] = tuning
    if tsearch is not None:
        info["auto_timesteps"] = tsearch.record()
    if training:
        rank = ddp.rank()
        ddp.finish()
        if rank != 0:  # under torchrun only rank 0 writes
            return {"out": req.out, "rank": rank}
    lower = (lambda tmp: lower_into(backend, snn, tmp)) if backend is not None else None
    write_artifact(req.out, snn, model, info, force=req.force or training, lower=lower,
                   carry=(DIRNAME,))
    summary = {"out": req.out, "layers": len([n for n in snn.nodes if isinstance(n, IFNode)]),
               "timesteps": snn.timesteps, "warnings": info["warnings"], "target": req.target,
               "seconds": round(time.perf_counter() - t0, 3)}
    if tuning is not None:
        last = tuning["stages"][-1]["best"] if tuning["stages"] else {}
        summary["tuning"] = {"method": tuning["method"], "epochs": tuning["epochs"], **last}
    if tsearch is not None:
        summary["auto_timesteps"] = info["auto_timesteps"]
    return summary


def _check_tuning(req: CompileRequest):
    """The tuning options, checked (None when the run only converts), and one warning per
    option the method ignores (:func:`..tune.methods.review_options`)."""
    from ..tune.methods import canonical, review_options
    from ..tune.options import TrainOptions
    from ..tune.ptl import PERCENTILE_GRID

    if req.fanin is not None and req.fanin < 1:
        raise UsageError(f"--fanin must be at least 1, got {req.fanin}")
    if req.prune_ahead < 0:
        raise UsageError(f"--prune-ahead must be >= 0, got {req.prune_ahead}")
    from ..passes.constrain import FANIN_MODES
    if req.fanin_mode not in FANIN_MODES:
        raise UsageError(f"unknown --fanin-mode '{req.fanin_mode}'", f"use one of {', '.join(FANIN_MODES)}")
    method = canonical(req.method)
    if req.val and not req.train and req.auto_timesteps is None:
        raise UsageError("--val was given without --train", "pass --train TRAIN.npz as well, or "
                         "--timesteps auto (which chooses T on --val), or drop --val")
    if req.resume and not req.train:
        raise UsageError("--resume continues a tuning run, which needs --train and --val")
    if req.train and not req.val:
        raise UsageError("--train needs --val: the scheduler watches validation accuracy",
                         "hold out part of the training data and pass it with --val")
    if req.train and method == "none":
        raise UsageError("--method none converts only, but --train was given",
                         "drop --train/--val, or use --method ptl")
    if req.train and method in ("ltl", "stdb") and req.options.spikes == "signed":
        raise UsageError(f"--method {method} trains through binary spikes only (its surrogate gradient "
                         "has no negative spike)", "use --method ptl or tandem with --spikes signed, "
                         "or --spikes binary")
    notes = review_options(method, _given_options(req), training=bool(req.train),
                           settings={"fanin": req.fanin, "norm": req.norm, "surrogate": req.surrogate,
                                     "distill": req.distill},
                           world_size=int(os.environ.get("WORLD_SIZE", "1")))
    if not req.train:
        return None, notes
    given = {"surrogate": req.surrogate, "surrogate_alpha": req.surrogate_alpha,
             "surrogate_beta": req.surrogate_beta, "balance_scale": req.balance_scale}
    opts = TrainOptions(epochs=req.epochs, patience=req.patience, batch_size=req.batch_size,
                        joint_final=req.joint_final, count_aware=req.count_aware, distill=req.distill,
                        distill_temperature=req.distill_temperature, method=method, seed=req.seed, device=req.device,
                        percentile=100.0 if req.norm == "max" else req.percentile,
                        percentile_search=PERCENTILE_GRID if req.percentile_search and req.norm != "max" else (),
                        **given)
    opts.check()
    return opts, notes


def _given_options(req: CompileRequest) -> set[str]:
    """The method-dependent options the user set: ``req.explicit`` where the caller knows
    (the CLI), else those whose value differs from the default; --resume when it is on."""
    from dataclasses import fields

    from ..tune.methods import OPTIONS

    if req.explicit is not None:
        given = set(req.explicit) & set(OPTIONS)
    else:
        given = {f.name for f in fields(req) if f.name in OPTIONS and getattr(req, f.name) != f.default}
    given |= {k for k in ("surrogate", "surrogate_alpha", "surrogate_beta", "balance_scale")
              if getattr(req, k) is not None}
    return (given | {"resume"}) if req.resume else (given - {"resume"})


def _check_targets(data: Dataset, out_shape: tuple[int, ...], validation: bool = False) -> None:
    """Labels must index the model's outputs; regression targets must have its shape."""
    if data.is_classification:
        n_out = int(np.prod(out_shape))
        y = data.y
        if y.ndim != 1:
            raise DataError(f"'{data.path}': labels y have shape {y.shape}, expected (N,)")
        if y.min() < 0 or y.max() >= n_out:
            raise DataError(f"'{data.path}': labels span {int(y.min())}..{int(y.max())}, but the model "
                            f"has {n_out} outputs", "labels must be class indices 0..outputs-1")
        if validation and len(np.unique(y)) < 2:
            raise DataError(f"'{data.path}': the validation set holds only one class ({int(y[0])})",
                            "validate on a sample of every class (e.g. a stratified split)")
    elif tuple(data.y.shape[1:]) != tuple(out_shape):
        raise DataError(f"'{data.path}': targets y have shape {data.y.shape}, the model outputs "
                        f"(N, {', '.join(map(str, out_shape))})")


def _sha256(path: str | None) -> str | None:
    if not path:
        return None
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _run_fingerprint(req: CompileRequest, topts) -> dict[str, Any]:
    """What must match for --resume to continue a run: inputs (by content) and options."""
    return {"model": _sha256(req.model), "calib": _sha256(req.calib), "train": _sha256(req.train),
            "val": _sha256(req.val), "options": asdict(req.options), "fanin": req.fanin,
            "prune_ahead": req.prune_ahead, "fanin_mode": req.fanin_mode,
            "norm": req.norm, "percentile": req.percentile, "output": req.output,
            "tuning": asdict(topts)}


def _pruned_share(net) -> float:
    total = sum(int(net.mask(n).numel()) for n in net.weighted)
    kept = sum(int(net.mask(n).sum()) for n in net.weighted)
    return 1.0 - kept / total if total else 0.0


def _target_resources(art) -> dict[str, dict[str, int]]:
    """Per-layer figures (cores) of the backend the artifact was compiled for; empty for the
    reference simulator, or when that backend is not installed here."""
    name = art.info.get("target", SIM)
    if name == SIM or name not in available_backends():
        return {}
    opts = (art.info.get("backend") or {}).get("options") or {}
    try:
        return get_backend(name, opts).layer_resources(art.graph)
    except SnnCompileError:
        raise
    except Exception as e:  # a plugin's bug must not cost the user the evaluation
        log.warning("backend '%s' could not estimate its resources (%s: %s)", name, type(e).__name__, e)
        return {}


def parse_timesteps(text: str | None) -> list[int] | None:
    """'8' or '4,8,16,32' -> [8] or [4, 8, 16, 32]."""
    if text is None or text == "":
        return None
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--timesteps takes integers separated by commas, got '{text}'") from None
    if not values or min(values) < 1:
        raise UsageError(f"--timesteps values must be >= 1, got '{text}'")
    return values


def _score(pred: np.ndarray, data: Dataset) -> dict[str, float]:
    if data.y is None:
        return {}
    if data.is_classification:
        return {"accuracy": float((pred.reshape(len(pred), -1).argmax(1) == data.y).mean())}
    err = pred.reshape(data.y.shape) - data.y
    mse = float(np.mean(err ** 2))
    peak = float(data.y.max() - data.y.min())  # the targets' range (1 for images in [0, 1])
    psnr = 10.0 * np.log10(peak ** 2 / mse) if mse > 0 and peak > 0 else float("inf")
    return {"mse": mse, "psnr": float(psnr)}


def evaluate_artifact(out: str, data_path: str, timesteps: list[int] | None = None,
                      batch_size: int = 256, progress: bool = False) -> dict[str, Any]:
    """ANN (onnxruntime) versus SNN (reference simulator) on a labelled data file."""
    art = read_artifact(out)
    g = art.graph
    data = load_npz(data_path, g.input.shape, need_labels=True)
    ann_pred = np.concatenate([b[g.meta["onnx_output"]] for b in onnx_forward(
        art.load_model(), g.meta["onnx_input"], [g.meta["onnx_output"]], data.x, batch_size)])
    ann_score = _score(ann_pred, data)
    macs = ann_macs(g)
    runs = []
    for T in (timesteps or [g.timesteps]):
        res = simulate(g, data.x, timesteps=T, batch_size=batch_size, progress=progress)
        snn_score = _score(res.output, data)
        layers = []
        for p in populations(g):
            row = {"name": p.name, "kind": p.kind, "synapses": p.synapses, "neurons": p.neurons,
                   "max_fanin": p.max_fanin, "weight_bits": p.weight_bits}
            if p.name in res.spike_counts:
                c = res.spike_counts[p.name].reshape(len(data.x), -1)
                row["spikes_per_sample"] = float(c.sum(1).mean())
                row["firing_rate"] = float(c.mean() / T)
                row["saturations"] = int(res.saturations.get(p.name, 0))
            else:
                row["spikes_per_sample"] = 0.0
            if isinstance(g[p.name], IFNode):
                row["threshold_max"] = int(np.max(g[p.name].threshold))
            layers.append(row)
        run = {"timesteps": T, "samples": int(len(data.x)),
               "synops_per_sample": float(res.synops.mean()),
               "ann_macs_per_sample": macs,
               "synops_per_mac": float(res.synops.mean() / macs) if macs else None,
               "layers": layers}
        for k, v in ann_score.items():
            run[f"ann_{k}"] = v
        for k, v in snn_score.items():
            run[f"snn_{k}"] = v
        if data.is_classification:
            run["agreement"] = float((res.output.argmax(1) == ann_pred.reshape(len(ann_pred), -1).argmax(1)).mean())
        runs.append(run)
    result = dict(runs[-1])
    rows = runs[-1]["layers"]
    result["max_weight_bits"] = max((r["weight_bits"] for r in rows), default=0)
    result["max_fanin"] = max((r["max_fanin"] for r in rows), default=0)
    result["constraints"] = art.info.get("constraints", {})
    result["target"] = art.info.get("target", SIM)
    resources = _target_resources(art)
    if resources:
        for r in rows:
            r.update(resources.get(r["name"], {}))
        result["cores"] = sum(v.get("cores", 0) for v in resources.values())
    if "tuning" in art.info:
        t = art.info["tuning"]
        result["tuning"] = {k: t.get(k) for k in ("method", "epochs", "epochs_budget", "seconds")}
    if len(runs) > 1:
        result["sweep"] = [{k: r[k] for k in r if k != "layers"} for r in runs]
    return result

