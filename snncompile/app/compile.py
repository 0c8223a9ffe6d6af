"""The user-level job of `convert`: a model through the whole flow to an output directory.

The CLI and the Python API (app/api.py) are thin layers over :func:`compile_model`.

Why one module: it is the one place where the steps meet in their order (claim the output,
import and rewrite, calibrate, apply the target's profile, convert, calibrate biases, pick T,
tune, check, lower, write); each step is a call into its own folder, and splitting the
sequence would hide the order that the artifact's reproducibility depends on.
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

from ..calibrate.bn_stats import data_free_scales
from ..calibrate.statistics import Calibration, activation_scales
from ..calibrate.timesteps import TimestepSearch
from ..data import Dataset, load_npz
from ..errors import DataError, ModelError, UsageError
from ..frontend import import_onnx, load_onnx_file
from ..frontend.linear import carry_linear_values
from ..frontend.relay import relay_message, relay_pools
from ..frontend.rewrite import MAXPOOL_CHOICES, maxpool_to_avgpool, maxpool_to_conv
from ..ir import Graph, IFNode
from ..ir.structure import zeroed_layers
from ..passes.constrain import FANIN_MODES, constrain, iter_fanin_masks, pruned_share
from ..passes.calibrate_bias import MIN_CALIBRATION_SAMPLES, calibrate_biases, calibration_samples
from ..passes.convert import ConversionOptions, convert
from ..passes.timesteps import with_timesteps
from ..fsutil import check_replaceable, claim_output
from ..progress import progress_bar
from ..ir.files import sha256_file
from ..targets.artifact import is_artifact, write_artifact
from ..targets.rules import LimitError, violations
from ..targets.api import Backend
from ..targets.profile import Profile, ProfileChoice, apply_profile, explicit_options, fit_input_width
from ..targets.select import check_fit, default_out, lower_into, resolve_target, target_info
from ..tune.checkpoint import DIRNAME as CHECKPOINTS
from ..tune.checkpoint import CheckpointDir
from ..tune.methods import OPTIONS, canonical, get_method, review_options
from ..tune.model import TandemNet, relu_caps
from ..tune.options import TrainOptions
from ..tune.ptl import PERCENTILE_GRID
from ..tune.runtime import distributed as ddp

log = logging.getLogger("snncompile")

# Calibration samples the bias correction simulates (Li et al. use about 1,000).
BIAS_CALIBRATION_SAMPLES = 1024


@dataclass
class CompileRequest:
    """Everything `snncompile convert` takes."""

    model: str
    out: str | None          # None or "": default_out(model, target), beside the model
    target: str = "sim"
    calib: str | None = None
    norm: str = "channel"           # a percentile per channel (calibrate.statistics.NORM_MODES)
    percentile: float = 99.9
    percentile_search: bool = False  # --percentile auto: tuning picks each layer's on --val
    calibrate_bias: bool = True    # correct biases on --calib at T, no labels (passes.calibrate_bias)
    output: str | None = None
    seed: int = 0
    force: bool = False
    options: ConversionOptions = ConversionOptions()
    target_options: dict[str, str] = field(default_factory=dict)  # --target-option KEY=VALUE
    maxpool: str = "keep"          # --maxpool: keep max pooling, or rewrite it (avg) before import
    # Constraints and tuning (progressive tandem learning); see snncompile/tandem.
    fanin: int | None = None
    prune_ahead: int = 99          # stages a layer's fan-in mask comes before it spikes
    fanin_mode: str = "magnitude"  # which weights a neuron keeps (passes.constrain.FANIN_MODES)
    train: str | None = None
    val: str | None = None
    method: str = "ptl"            # a name in snncompile.tune.methods, or none (conversion only)
    epochs: int = 60
    patience: int = 6
    joint_final: bool = True       # ptl: the last stage trains every layer, not only the output
    count_aware: bool = True       # ptl: layers not spiking yet pass their future count's value
    fit_thresholds: bool = True    # ptl/tandem: re-derived thresholds fitted to T (tune.model.recalibrate)
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


@dataclass
class ProfileFit:
    """What :func:`profiled` took from the target's profile: the profile, what it chose
    (None for the reference simulator) and the options the user set."""

    profile: Profile | None
    choice: ProfileChoice | None
    given: set[str]


def profiled(req: CompileRequest, backend: Backend | None) -> tuple[CompileRequest, ProfileFit]:
    """``req`` with the target profile's settings on every conversion option the user did
    not set (:func:`..targets.profile.apply_profile`)."""
    given = explicit_options(req.options, req.explicit)
    if backend is None:
        return req, ProfileFit(None, None, given)
    prof = backend.profile()
    opts, choice = apply_profile(prof, req.options, given, backend.name)
    return replace(req, options=opts), ProfileFit(prof, choice, given)


def calibrated(req: CompileRequest, fit: ProfileFit, model: Any, ann: Graph,
               calib_data: Dataset | None) -> tuple[Calibration, CompileRequest]:
    """The activation scales `convert` uses (``calib_data``'s, else the BatchNorm statistics'
    or the synthetic inputs', :func:`..calibrate.bn_stats.data_free_scales`), and ``req``
    with the --input-bits the profile fits to them. `inspect --target` predicts through this
    same function, so its line is what convert records."""
    if calib_data is not None:
        calib = activation_scales(model, ann, calib_data.x, req.norm, req.percentile, seed=req.seed,
                                  progress=req.progress)
    else:
        pct = "percentile" in req.explicit if req.explicit is not None else req.percentile != 99.9
        calib = data_free_scales(model, ann, req.norm, req.percentile if pct else None, req.seed,
                                 progress=req.progress)
    if fit.choice is not None:
        req = replace(req, options=fit_input_width(fit.profile, fit.choice, ann, calib, req.options,
                                                   fit.given, req.fanin, req.fanin_mode,
                                                   progress=req.progress))
        log.info(fit.choice.line())
    return calib, req


def seed_everything(seed: int) -> None:
    """Make a run reproducible from ``--seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def compile_model(req: CompileRequest) -> dict[str, Any]:
    """Compile as :func:`_compile` says, holding the claim on the output directory from the
    start (:func:`..fsutil.claim_output`): a second writer of OUT is refused at once, not
    after its work. Under torchrun only rank 0 claims (the other ranks never write)."""
    if os.environ.get("RANK", "0") != "0":
        return _compile(req, claimed=False)
    with claim_output(req.out):
        return _compile(req, claimed=True)


def _compile(req: CompileRequest, claimed: bool) -> dict[str, Any]:
    """Import, calibrate, convert, (constrain and tune), check, write; returns a summary
    (also stored in compile.json).

    The steps, in order: the target and every option are checked, then the output path,
    before any work; the ONNX model is imported (the frontend's folding passes) and the data
    files loaded and checked; calibration gives the activation scales; the conversion passes
    (:data:`..passes.convert.CONVERSION_PASSES`) give the integer SNN; ``--timesteps auto``
    picks T; ``--fanin``/``--train`` constrain (:func:`..passes.constrain.constrain`) and tune
    it (:mod:`..tune`); the target's design rules check it; the artifact is written
    atomically, with the backend's lowering inside. A tuning run keeps per-stage checkpoints
    in OUT/checkpoints (see :mod:`..tune.checkpoint`)."""
    backend = resolve_target(req.target, req.target_options)
    if not req.out:
        req = replace(req, out=default_out(req.model, req.target))
    req, fit = profiled(req, backend)
    req.options.check()
    if req.auto_timesteps is not None and not req.val:
        raise UsageError("--timesteps auto needs --val: T is chosen by accuracy on validation data",
                         "pass --val VAL.npz (labelled), or give --timesteps a number")
    topts, notes = _check_tuning(req)
    training = topts is not None
    for note in notes:
        log.warning(note)
    ckpt_dir = os.path.join(req.out, CHECKPOINTS)
    _check_output(req, training, ckpt_dir)
    seed_everything(req.seed)
    t0 = time.perf_counter()
    with progress_bar(req.progress, 2, f"importing {os.path.basename(req.model)}", "step") as bar:
        model, self_contained = load_onnx_file(req.model)  # a large model takes a minute to load and check
        bar.update(1)
        # the same function, with the tensors of the populations that carry linear values
        model, carried = _carry_linear_values(model, req.fanin)
        relays: list[dict[str, Any]] = []
        if req.fanin is not None:  # the same function: the kept model has the relays' tensors
            model, pools = relay_pools(model, req.fanin)
            if pools:
                relays.append({"pass": relay_pools.__name__, "nodes": pools,
                               "message": relay_message(pools, req.fanin)})
                log.warning(relays[-1]["message"])
        # the ANN baseline the artifact keeps: the user's file where it holds every weight and
        # no rewrite of the same function added tensors (copied from disk, so the loaded model
        # can go after calibration), else the model in memory
        source_model = req.model if self_contained and not (carried or relays) else model
        model, rewrites = _rewrite(model, req.maxpool)
        rewrites = carried + relays + rewrites
        imported = import_onnx(model, output=req.output)
        bar.update(1)
    ann, import_warnings = imported.graph, list(imported.warnings)
    del imported  # its graph is ann; nothing else of it is kept
    ann.meta["source"] = os.path.basename(req.model)
    if backend is not None and (early := backend.check_early(ann)):  # e.g. more neurons than it holds
        raise LimitError(backend.name, early)
    calib_data, train_data, val_data = _load_data(req, ann, training)
    t_import = time.perf_counter() - t0
    calib, req = calibrated(req, fit, model, ann, calib_data)
    choice = fit.choice
    if req.auto_timesteps is None:  # only the search for T runs the ONNX model again
        model = None
    snn = convert(ann, calib, req.options)
    warnings = list(notes) + [r["message"] for r in rewrites] + import_warnings + list(calib.warnings)
    zeroed = zeroed_layers(snn)
    if zeroed:  # e.g. a residual branch far weaker than the skip whose add's scale it shares
        warnings.append(f"{len(zeroed)} layer(s) rounded to all-zero weights at --bits "
                        f"{req.options.weight_bits}, so they have no effect: " + ", ".join(f"'{z}'" for z in zeroed)
                        + "; pass more --bits")
        log.warning(warnings[-1])
    # the bias correction fits one T and the original ANN: not with tuning (which trains the
    # biases), after a --fanin limit (it takes back part of the pruning's shift), and with
    # --timesteps auto for each candidate T
    # without --calib: on the synthetic inputs the thresholds came from (calibrate/statistics.py)
    bias_x = calib_data.x[:BIAS_CALIBRATION_SAMPLES] if calib_data is not None else calib.inputs
    calibrating = req.calibrate_bias and bias_x is not None and not training
    if calibrating:  # a budget of simulator work: an ImageNet network is too big for it
        asked = bool(req.explicit and "calibrate_bias" in req.explicit)
        n = calibration_samples(ann, max(req.auto_timesteps.candidates) if req.auto_timesteps
                                else snn.timesteps, bias_x.shape[0], asked)
        if n < bias_x.shape[0]:
            msg = (f"label-free calibration (--calibrate-bias) on {n} of {bias_x.shape[0]} inputs: "
                   "the network is large for the reference simulator" if n else
                   "label-free calibration (--calibrate-bias) skipped: the network is too large to "
                   "simulate on enough inputs in reasonable time (minutes per input at this size); "
                   "give --calibrate-bias explicitly to run it on "
                   f"{min(MIN_CALIBRATION_SAMPLES, bias_x.shape[0])} inputs anyway")
            log.warning(msg)
            warnings.append(msg)
        bias_x, calibrating = bias_x[:n], n > 0
    calib.inputs = None  # the synthetic inputs: bias_x holds what is still needed of them
    if not (calibrating or training or req.auto_timesteps is not None):
        ann = bias_x = None  # the float network: nothing after conversion reads it here
    if req.calibrate_bias and training and req.explicit and "calibrate_bias" in req.explicit:
        log.warning("--calibrate-bias is not applied with --train: tuning trains the biases")
    bias_record = None
    tsearch = None
    if req.auto_timesteps is not None:  # see snncompile/calibrate/timesteps.py
        tsearch = TimestepSearch(req.auto_timesteps, model, ann, val_data)
        if training:  # tune at the smallest T the converted network meets, else the largest
            first = tsearch.run(snn, "conversion")
            T = first.chosen or max(req.auto_timesteps.candidates)
            snn, req = with_timesteps(snn, T), replace(req, options=replace(req.options, timesteps=T))
    tuning: dict[str, Any] | None = None
    bits = req.options.weight_bits
    if training:
        if backend is not None:  # fail before tuning, not after, on the limits the target sets
            check_fit(backend, constrain(snn, bits, req.fanin, req.fanin_mode), choice)
        snn, tuning = _tune(req, snn, topts, ckpt_dir, train_data, val_data, calib_data, relu_caps(ann))
    elif req.fanin:
        pruned = pruned_share(snn, iter_fanin_masks(snn, req.fanin, req.fanin_mode))
        snn = constrain(snn, bits, req.fanin, req.fanin_mode)
        if pruned > 0:  # a limit every layer meets already costs nothing
            share = f"{pruned:.0%}" if pruned >= 0.005 else "under 1%"
            msg = (f"--fanin {req.fanin} pruned {share} of the weights without "
                   "fine-tuning: accuracy will suffer; pass --train and --val to recover it")
            log.warning(msg)
            warnings.append(msg)
    if training or req.fanin:
        problems = violations(snn, bits=bits, fanin=req.fanin)
        if problems:  # our bug, not the user's: refuse to write a graph that breaks the limits
            raise ModelError("the tuned graph breaks the requested limits: " + "; ".join(problems))
    if calibrating and tsearch is None:
        snn, bias_record = calibrate_biases(snn, ann, bias_x)
    if tsearch is not None:  # the final network, tuned or not, at the smallest T that meets
        xb = bias_x if calibrating else None
        prepare = (lambda g, T: calibrate_biases(with_timesteps(g, T), ann, xb)[0]) if calibrating else None
        final = tsearch.run(snn, "tuned" if training else "conversion", prepare)
        if final.chosen is None:
            raise tsearch.not_found(final, tuned=training, calibrated=calib_data is not None)
        snn = with_timesteps(snn, final.chosen)
        if calibrating:
            snn, bias_record = calibrate_biases(snn, ann, xb)
        req = replace(req, options=replace(req.options, timesteps=final.chosen))
    if bias_record is not None and len(bias_record.output_errors) > 1:
        log.info(f"calibration at T = {snn.timesteps}: kept '{bias_record.kept}' of "
                 + ", ".join(f"{k} ({v:.3g})" for k, v in bias_record.output_errors.items())
                 + " (squared error of the outputs against the ANN's on the calibration inputs)")
    check_fit(backend, snn, choice)  # every violation at once, before anything is written
    info = {
        "source": os.path.abspath(req.model), "target": req.target,
        "backend": target_info(backend, req.target), "seed": req.seed,
        "profile": choice.as_dict() if choice is not None else None,
        "options": asdict(req.options), "normalization": calib.method,
        "calibration_samples": int(calib_data.x.shape[0]) if calib_data is not None else 0,
        "lam": {k: v.tolist() for k, v in calib.lam.items()},
        "constraints": {"bits": req.options.weight_bits, "fanin": req.fanin},
        "warnings": warnings,
        "rewrites": rewrites,
        "import_seconds": round(t_import, 3),
        "convert_seconds": round(time.perf_counter() - t0, 3),
    }
    if bias_record is not None:
        info["bias_calibration"] = {"timesteps": snn.timesteps, "layers": bias_record.layers,
                                    "kept": bias_record.kept, "output_errors": bias_record.output_errors,
                                    "samples": int(len(bias_x)), "synthetic": calib_data is None}
    if tuning is not None:
        info["tuning"] = tuning
    if tsearch is not None:
        info["auto_timesteps"] = tsearch.record()
    if training:
        rank = ddp.rank()
        ddp.finish()
        if rank != 0:  # under torchrun only rank 0 writes
            return {"out": req.out, "rank": rank}
    lower = (lambda tmp: lower_into(backend, snn, tmp, progress=req.progress)) if backend is not None else None
    write_artifact(req.out, snn, source_model, info, force=req.force or training, lower=lower,
                   carry=(CHECKPOINTS,), inputs=_inputs(req), claimed=claimed)
    summary = {"out": req.out, "layers": len([n for n in snn.nodes if isinstance(n, IFNode)]),
               "timesteps": snn.timesteps, "warnings": info["warnings"], "target": req.target,
               "seconds": round(time.perf_counter() - t0, 3)}
    if choice is not None:
        summary["profile"] = choice.as_dict()
    if tuning is not None:
        last = tuning["stages"][-1]["best"] if tuning["stages"] else {}
        summary["tuning"] = {"method": tuning["method"], "epochs": tuning["epochs"],
                             "world_size": tuning["world_size"], **last}
    if tsearch is not None:
        summary["auto_timesteps"] = info["auto_timesteps"]
    return summary




def _rewrite(model, maxpool: str) -> tuple[Any, list[dict[str, Any]]]:
    """The model with the rewrites the user asked for (``--maxpool avg|conv``), and one record
    per rewrite applied (pass, nodes, message), each also logged: never a silent change."""
    if maxpool not in MAXPOOL_CHOICES:
        raise UsageError(f"unknown --maxpool '{maxpool}'", f"use one of {', '.join(MAXPOOL_CHOICES)}")
    if maxpool == "keep":
        return model, []
    rewrite = {"avg": maxpool_to_avgpool, "conv": maxpool_to_conv}[maxpool]
    model, nodes = rewrite(model)
    if not nodes:
        return model, []
    into = ("average pools of the same window" if maxpool == "avg" else
            "depthwise convolutions of the same window and stride (weights 1/window, an average) "
            "with spiking neurons of their own")
    msg = (f"--maxpool {maxpool}: {len(nodes)} max pool(s) rewritten to {into} ({', '.join(nodes)}); "
           "the network computes a different function, which --train recovers")
    log.warning(msg)
    return model, [{"pass": rewrite.__name__, "nodes": nodes, "message": msg}]


def _carry_linear_values(model, fanin: int | None) -> tuple[Any, list[dict[str, Any]]]:
    """:func:`..frontend.linear.carry_linear_values`, each record's line printed (never a
    silent change)."""
    model, records = carry_linear_values(model, fanin)
    for record in records:
        log.warning(record["message"])
    return model, records


def _check_output(req: CompileRequest, training: bool, ckpt_dir: str) -> None:
    """An existing output directory is replaced only with --force, or continued with
    --resume when it holds a tuning run's checkpoints."""
    if os.path.exists(req.out) and not req.force:
        if not (req.resume and training and os.path.isdir(ckpt_dir)):
            has_ckpt = os.path.isdir(ckpt_dir)
            raise UsageError(f"output directory '{req.out}' already exists"
                             + (" and holds checkpoints of an earlier tuning run" if has_ckpt else ""),
                             "pass --resume to continue that run, or --force to start over" if has_ckpt
                             else "choose another -o, or pass --force to replace it")
    # what --force may replace, and where the run's inputs are (--resume: OUT is ours)
    check_replaceable(req.out, True, is_artifact, _inputs(req))


def _inputs(req: CompileRequest) -> tuple[str | None, ...]:
    """The files a run reads, which its output must never replace."""
    return (req.model, req.calib, req.train, req.val)


def _load_data(req: CompileRequest, ann: Graph, training: bool
               ) -> tuple[Dataset | None, Dataset | None, Dataset | None]:
    """The calibration, training and validation data the request names, each checked
    against the model's input and outputs."""
    calib_data = load_npz(req.calib, ann.input.shape, need_labels=False) if req.calib else None
    train_data = val_data = None
    out_shape = tuple(ann[ann.outputs[0]].shape)
    if training:
        train_data = load_npz(req.train, ann.input.shape, need_labels=True)
        val_data = load_npz(req.val, ann.input.shape, need_labels=True)
        train_data.check_targets(out_shape)
        val_data.check_targets(out_shape, validation=True)
        if train_data.is_classification != val_data.is_classification:
            raise DataError(f"'{req.train}' and '{req.val}' disagree on the task: one has integer "
                            "labels, the other float targets")
    elif req.val:  # --timesteps auto without tuning
        val_data = load_npz(req.val, ann.input.shape, need_labels=True)
        val_data.check_targets(out_shape, validation=True)
    return calib_data, train_data, val_data


def _tune(req: CompileRequest, snn: Graph, topts: TrainOptions, ckpt_dir: str, train_data: Dataset,
          val_data: Dataset, calib_data: Dataset | None, caps: dict[str, float]) -> tuple[Graph, dict[str, Any]]:
    """Tune the converted graph under the requested limits with the requested method
    (``caps``: the ANN's ReLU clips, :func:`..tune.model.relu_caps`); returns the tuned
    graph and what compile.json records of the run."""
    net = TandemNet(snn, bits=req.options.weight_bits, fanin=req.fanin, prune_lead=req.prune_ahead,
                    fanin_mode=req.fanin_mode, caps=caps)
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
              "patience": topts.patience, "joint_final": topts.joint_final, "fit_thresholds": topts.fit_thresholds,
              "count_aware": topts.count_aware,
              "distill": topts.distill, "distill_temperature": topts.distill_temperature,
              "seconds": res.seconds, "stages": res.stages,
              "history": res.history}
    if topts.percentile_search:  # --percentile auto: what each layer got
        tuning["percentiles"] = {layer: rec["chosen"] for st in res.stages
                                 for layer, rec in st.get("percentiles", {}).items()}
    return net.to_graph(), tuning


def _check_tuning(req: CompileRequest):
    """The tuning options, checked (None when the run only converts), and one warning per
    option the method ignores (:func:`..tune.methods.review_options`)."""
    if req.fanin is not None and req.fanin < 1:
        raise UsageError(f"--fanin must be at least 1, got {req.fanin}")
    if req.prune_ahead < 0:
        raise UsageError(f"--prune-ahead must be >= 0, got {req.prune_ahead}")
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
                        fit_thresholds=req.fit_thresholds,
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

    if req.explicit is not None:
        given = set(req.explicit) & set(OPTIONS)
    else:
        given = {f.name for f in fields(req) if f.name in OPTIONS and getattr(req, f.name) != f.default}
    given |= {k for k in ("surrogate", "surrogate_alpha", "surrogate_beta", "balance_scale")
              if getattr(req, k) is not None}
    return (given | {"resume"}) if req.resume else (given - {"resume"})


def _sha256(path: str | None) -> str | None:
    return sha256_file(path) if path else None


def _run_fingerprint(req: CompileRequest, topts) -> dict[str, Any]:
    """What must match for --resume to continue a run: inputs (by content) and options."""
    return {"model": _sha256(req.model), "calib": _sha256(req.calib), "train": _sha256(req.train),
            "val": _sha256(req.val), "options": asdict(req.options), "fanin": req.fanin,
            "prune_ahead": req.prune_ahead, "fanin_mode": req.fanin_mode,
            "norm": req.norm, "percentile": req.percentile, "output": req.output, "maxpool": req.maxpool,
            "tuning": asdict(topts)}


