"""Progressive tandem learning (PTL) with an adaptive scheduler.

Stages 1..L convert hidden layer k: layers 1..k spike (integer forward), k+1..L stay ANN,
and layer k's constraints (fan-in mask, weight quantization, thresholds) take effect. Stage
L + 1 constrains the output layer and is trained at the lower final learning rate on the
exact integer network: only the output layer, or (``joint_final``) every layer, end to end
through the tandem rule. In each stage a fresh Adam trains everything not fixed yet; the
scheduler watches validation accuracy (loss for regression), keeps the stage's best
weights, and when ``patience`` epochs bring no improvement (or the stage's share of the
epoch budget is spent) reloads them, fixes the stage's layer and moves on. A layer's
threshold is re-derived when it starts spiking, from a percentile of its ANN activation
given the spiking layers before it; with ``percentile_search`` (``--percentile auto``) the
percentile is the candidate whose converted network scores best on validation, because the
best clipping point depends on T (few count levels favour clipping more) and on the layer. With
``distill`` the training loss mixes in a match to the float ANN's outputs (knowledge
distillation; the targets are taken once, before the first stage), so each stage learns to
reproduce the network it replaces rather than only the labels. Method
``tandem`` (formerly ``tl``) is tandem learning all at once: one stage with every layer
spiking, every constraint imposed and every layer trained from the start, the same budget.
The other methods are in :mod:`.methods`.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ..data import Dataset
from ..ir.structure import op_fanin
from .runtime import distributed as ddp
from .runtime.allocator import keep_step_memory
from .runtime.floats import denormals_flushed
from .checkpoint import CheckpointDir
from . import prefix as prefix_module
from .model import TandemNet
from . import objective
from .options import TrainOptions
from .prefix import PrefixCache, frontier
from .refit import impose_due_masks


# The candidates of --percentile auto: from clipping 3% of a layer's activations to 0.01%.
PERCENTILE_GRID: tuple[float, ...] = (97.0, 98.0, 99.0, 99.5, 99.9, 99.99)


@dataclass
class TuneResult:
    """What a tuning run did: one record per epoch, one summary per stage."""

    history: list[dict[str, Any]] = field(default_factory=list)
    stages: list[dict[str, Any]] = field(default_factory=list)
    epochs: int = 0
    seconds: float = 0.0
    world_size: int = 1


def stage_plan(net: TandemNet, method: str) -> list[int]:
    """The stages to run: 1..L+1 for PTL (after an ANN stage 0 when fan-in masks are
    imposed ahead of conversion and one falls due before the first layer spikes), only L+1
    for all-at-once."""
    if method != "ptl":  # tandem (and its old name tl): one stage, everything spiking
        return [net.n_stages]
    prunes = [n for n in net.pruned(0) if net.budgets.get(n, math.inf) < op_fanin(net.base[n], nonzero=False)]
    first = 0 if net.prune_lead > 0 and prunes else 1
    return list(range(first, net.n_stages + 1))


def stage_share(left: int, stages: int) -> int:
    """The epochs a stage may spend of the ``left`` ones, ``stages`` (this one included)
    still to run: an equal share, rounded down, so the epochs that do not divide evenly go
    to the last stages, whose epochs cost a fraction of the first spiking stages' (they
    start from the kept spike trains of every fixed layer); at least one while any is left."""
    if left <= 0:
        return 0
    return max(1, left // stages)


def _key(m: dict[str, float]) -> tuple[float, ...]:
    """Higher is better: accuracy, ties broken by lower loss (the val split is small)."""
    return (m["accuracy"], -m["loss"]) if "accuracy" in m else (-m["loss"],)


StepLoss = Callable[[TandemNet, torch.Tensor, torch.Tensor], torch.Tensor]


def tune(net: TandemNet, train: Dataset, val: Dataset, opts: TrainOptions,
         checkpoints: CheckpointDir | None = None, report: Callable[[str], None] | None = None,
         on_stage_end: Callable[[int], None] | None = None, progress: bool = False,
         calib_x: np.ndarray | None = None, plan: list[int] | None = None,
         step_loss: StepLoss | None = None) -> TuneResult:
    """Run the schedule on ``net`` (in place; it ends at the last stage with its best
    weights). Stages already checkpointed are loaded instead of trained. ``calib_x``
    (default: the first 256 training inputs) sets thresholds of newly converted layers.
    ``plan`` overrides the stages of ``opts.method``; ``step_loss(net, x, y)`` replaces
    the tandem loss of a training batch (surrogate-gradient methods, see :mod:`.bptt`).
    Runs with denormal floats flushed to zero (:func:`.runtime.floats.denormals_flushed`) and glibc's
    allocator keeping a step's memory for the next (:func:`.runtime.allocator.keep_step_memory`)."""
    opts.check()
    keep_step_memory()
    with denormals_flushed():
        return _tune(net, train, val, opts, checkpoints, report, on_stage_end, progress, calib_x, plan,
                     step_loss)


def _tune(net: TandemNet, train: Dataset, val: Dataset, opts: TrainOptions,
          checkpoints: CheckpointDir | None, report: Callable[[str], None] | None,
          on_stage_end: Callable[[int], None] | None, progress: bool, calib_x: np.ndarray | None,
          plan: list[int] | None, step_loss: StepLoss | None) -> TuneResult:
    t0 = time.perf_counter()
    dev = torch.device(opts.device)
    net.to(dev)
    net.count_aware = False  # the float ANN, for a distillation teacher (set below)
    plan = plan if plan is not None else stage_plan(net, opts.method)
    result = TuneResult()
    done = checkpoints.completed() if checkpoints is not None else -1
    used = 0
    bar = _bar(progress, opts.epochs)
    say = report if (report is not None and ddp.rank() == 0) else (lambda s: None)
    if ddp.rank() != 0:
        bar = None
    teacher = None
    if opts.distill > 0:  # (methods with their own step_loss refuse distill in opts.check)
        if net.stage != 0 or net.masked.any():
            raise ValueError("distillation needs the network as converted, before any stage")
        net.eval()
        teacher = objective.teacher_outputs(net, train)
    # only a method whose ANN stages hand on to spiking ones models the counts to come (the
    # registry says which: LTL's stage 0 trains its teacher, which must stay the ANN)
    from .methods import get_method

    net.count_aware = opts.count_aware and get_method(opts.method).honours("count_aware")
    caches: list[PrefixCache] | None = None
    for i, stage in enumerate(plan):
        if stage <= done:
            state, record = checkpoints.load(stage, like=net.state_dict())
            net.stage, net._cache = stage, None
            net.load_state_dict({k: v.to(dev) for k, v in state.items()})
            used = record["epochs_used_total"]
            result.history.extend(record["history"])
            result.stages.append(record["summary"])
            say(f"stage {stage}/{net.n_stages} ({net.stage_name(stage)}): loaded from checkpoint, "
                f"val {_fmt(record['summary']['best'])}")
            if bar is not None:
                bar.update(len(record["history"]) - 1)
            caches = None
            continue
        xc = torch.as_tensor(calib_x if calib_x is not None else train.x[:256], device=dev)
        refitted = impose_due_masks(net, stage, opts, xc)
        if refitted:
            say(f"stage {stage}/{net.n_stages}: fan-in masks chosen and refitted on calibration inputs "
                f"(share of variance explained: {', '.join(f'{k} {v:.2f}' for k, v in refitted.items())})")
        ramp = net.due_masks() if opts.gradual else []
        final = i == len(plan) - 1 and opts.method == "ptl"
        fix = i > 0 and opts.method == "ptl" and not (final and opts.joint_final)
        caches = _prefix_caches(net, stage, [train, val], fix and step_loss is None,
                                previous=caches if i > 0 and plan[i - 1] == stage - 1 else None)
        if caches is not None:
            say(f"stage {stage}/{net.n_stages} ({net.stage_name(stage)}): spike trains of the fixed "
                f"layers kept ({sum(c.nbytes for c in caches) / 2 ** 20:.0f} MiB)")
        chosen: dict[str, dict[str, Any]] = {}
        if opts.recalibrate:
            prev = plan[i - 1] if i > 0 else 0
            # With count_aware the layers not spiking yet pass values on their scales' levels:
            # the first stage sets those scales from the network it starts from (fan-in masks
            # imposed), in order, as conversion set the scales from the unpruned ANN
            # (they follow the layers converted here, so a percentile search re-measures them
            # for every candidate: each is scored on the network it would leave)
            modelled = net.layers[stage:] if net.count_aware and i == 0 else []

            def remeasure() -> None:
                for layer in modelled:
                    net.recalibrate(layer, xc, opts.percentile, fit=opts.fit_thresholds)

            for layer in net.layers[max(prev, 0):stage]:  # the layers this stage converts
                if opts.percentile_search:
                    chosen[layer] = select_percentile(net, layer, xc, val, opts.percentile_search,
                                                      prefix=caches[1] if caches else None,
                                                      then=remeasure if modelled else None)
                    say(f"stage {stage}/{net.n_stages} ({layer}): percentile {chosen[layer]['chosen']:g} "
                        f"chosen on validation ({_scores(chosen[layer]['val'])})")
                else:
                    net.recalibrate(layer, xc, opts.percentile, fit=opts.fit_thresholds)
            remeasure()
        cap = stage_share(opts.epochs - used, len(plan) - i)
        history, summary = _run_stage(net, train, val, opts, stage, cap, final, say, bar, ramp,
                                      fix_earlier=fix, step_loss=step_loss, caches=caches,
                                      teacher=teacher)
        used += len(history) - 1
        if refitted:
            summary["refitted"] = {k: round(v, 4) for k, v in refitted.items()}
        if chosen:
            summary["percentiles"] = chosen
        result.history.extend(history)
        result.stages.append(summary)
        if checkpoints is not None and ddp.rank() == 0:
            checkpoints.save(stage, net.state_dict(), {"stage": stage, "epochs_used_total": used,
                                                       "history": history, "summary": summary})
        if on_stage_end is not None:
            on_stage_end(stage)
    if bar is not None:
        bar.close()
    ddp.barrier()
    result.epochs = used
    result.world_size = ddp.world_size()
    result.seconds = round(time.perf_counter() - t0, 3)
    return result


def select_percentile(net: TandemNet, layer: str, x: torch.Tensor, val: Dataset,
                      candidates: tuple[float, ...], prefix: PrefixCache | None = None,
                      then: Callable[[], None] | None = None) -> dict[str, Any]:
    """Set IF layer ``layer``'s scale from the candidate percentile (of its activation over
    ``x``) whose network, as it stands at the current stage, scores best on ``val``
    (accuracy, ties broken by loss; the first candidate on a full tie). ``then`` runs after
    each candidate is set, before it is scored (what depends on the layer's scale). Returns
    the choice and each candidate's score, for the stage's record."""
    scores: dict[float, dict[str, float]] = {}
    best: float | None = None

    def set_scale(p: float) -> None:
        net.recalibrate(layer, x, p)
        if then is not None:
            then()

    for p in candidates:
        set_scale(p)
        scores[p] = ddp.from_rank0(objective.evaluate(net, val, prefix=prefix))
        if best is None or _key(scores[p]) > _key(scores[best]):
            best = p
    assert best is not None
    set_scale(best)
    return {"chosen": best, "val": {f"{p:g}": _val(m) for p, m in scores.items()}}


def _scores(val: dict[str, dict[str, float]]) -> str:
    return ", ".join(f"{p}: {_fmt(m)}" for p, m in val.items())


def _ramp_steps(net: TandemNet, names: list[str]) -> int:
    """Epochs to halve each node's kept weights down to its budget."""
    steps = 0
    for n in names:
        full = op_fanin(net.base[n], nonzero=False)
        steps = max(steps, math.ceil(math.log2(full / net.budgets[n])) if full > net.budgets[n] else 0)
    return steps


def _run_stage(net: TandemNet, train: Dataset, val: Dataset, opts: TrainOptions, stage: int,
               cap: int, final: bool, say: Callable[[str], None], bar,
               ramp: list[str] | None = None, fix_earlier: bool = True,
               step_loss: StepLoss | None = None,
               caches: list[PrefixCache] | None = None,
               teacher: torch.Tensor | None = None) -> tuple[list, dict]:
    """One stage; fan-in masks in ``ramp`` are imposed gradually (kept weights halved each
    epoch), and the scheduler's best/patience start once they are complete. Layers
    converted in earlier stages stay fixed (``fix_earlier``); the first stage of a run
    trains every layer. ``caches``: the fixed layers' spike trains for ``train`` and
    ``val`` (:func:`_prefix_caches`); ``teacher``: the outputs :func:`teacher_outputs` gave
    on ``train``, the targets of distillation."""
    name = net.stage_name(stage)
    t0 = time.perf_counter()
    params = net.trainable(fix_earlier=fix_earlier)
    lr = opts.final_lr if final else opts.lr
    steps = _ramp_steps(net, ramp or [])
    if steps and (cap == 0 or not params):
        net.shrink(ramp, 0.0)  # no epochs to spend: impose at once
        steps = 0
    if steps:
        net.shrink(ramp, 0.5)
    def score() -> dict[str, float]:
        return ddp.from_rank0(objective.evaluate(net, val, prefix=caches[1] if caches else None))

    best = score()
    first = dict(best)
    history = [{"stage": stage, "layer": name, "epoch": 0, "train_loss": None, **_val(best),
                "seconds": round(time.perf_counter() - t0, 3)}]
    say(f"stage {stage}/{net.n_stages} ({name}) converted: val {_fmt(best)}")
    if cap == 0 or not params:
        return history, _summary(stage, name, first, best, 0, lr)
    best_state = copy.deepcopy(net.state_dict())
    opt = torch.optim.Adam(params, lr=lr, weight_decay=opts.weight_decay)
    gen = torch.Generator().manual_seed(opts.seed * 1000 + stage)
    dev = next(net.parameters()).device
    bad, best_epoch = 0, 0
    for epoch in range(1, cap + 1):
        net.train()
        perm = torch.randperm(len(train.x), generator=gen).numpy()
        total = 0.0
        for s in range(0, len(perm), opts.batch_size):
            idx = np.sort(perm[s:s + opts.batch_size])[ddp.rank()::ddp.world_size()]
            opt.zero_grad()
            if len(idx):
                x = torch.as_tensor(train.x[idx], device=dev)
                y = torch.as_tensor(train.y[idx], device=dev)
                given = caches[0].given(idx, dev) if caches else None
                if step_loss is not None:
                    loss = step_loss(net, x, y)
                elif teacher is not None:
                    loss = objective.distill_loss(net(x, given=given), y, teacher[torch.as_tensor(idx)].to(dev),
                                         train.is_classification, opts.distill, opts.distill_temperature)
                else:
                    loss = objective.loss(net(x, given=given), y, train.is_classification)
                loss.backward()
                total += float(loss.detach()) * len(idx)
            ddp.average_gradients(params)
            opt.step()
        total = ddp.total(total)
        net.eval()
        if epoch < steps:
            net.shrink(ramp, 0.5 ** (epoch + 1) if epoch + 1 < steps else 0.0)
        m = score()
        improved = _key(m) > _key(best) or epoch == steps  # the first fully pruned state
        if epoch < steps:
            improved = False
        if improved:
            best, best_epoch, bad = m, epoch, 0
            best_state = copy.deepcopy(net.state_dict())
        else:
            bad += 1
        rec = {"stage": stage, "layer": name, "epoch": epoch, "train_loss": round(total / len(perm), 6),
               **_val(m), "seconds": round(time.perf_counter() - t0, 3)}
        history.append(rec)
        say(f"stage {stage}/{net.n_stages} ({name}) epoch {epoch}/{cap}  train loss "
            f"{rec['train_loss']:.4f}  val {_fmt(m)}{'  *' if improved else ''}  "
            f"{rec['seconds']:.1f} s")
        if bar is not None:
            bar.set_postfix(stage=f"{stage}/{net.n_stages}", val=_fmt(m))
            bar.update(1)
        if bad >= opts.patience and epoch >= steps:
            break
    if epoch < steps:  # the budget ran out during the ramp: impose the masks, keep that state
        net.shrink(ramp, 0.0)
        best, best_epoch = score(), epoch
        best_state = copy.deepcopy(net.state_dict())
    net.load_state_dict(best_state)
    return history, _summary(stage, name, first, best, best_epoch, lr)


def _prefix_caches(net: TandemNet, stage: int, datasets: list[Dataset], fixed: bool,
                   previous: list[PrefixCache] | None = None) -> list[PrefixCache] | None:
    """Per data set, the spike trains of the layers fixed at ``stage`` (layers 1..stage-1,
    when earlier stages are ``fixed``), or None where there is nothing to keep, a hand-over
    is not an IF layer, or the trains would pass prefix.BUDGET_BYTES. ``previous``: the
    caches of stage - 1 of this run, whose layers are still as they were; the simulation
    then starts from their trains, so each stage simulates only the layer it fixed anew."""
    if not fixed or stage < 2:
        return None
    front = frontier(net.base, net.layers[:stage - 1])
    if front is None:
        return None
    samples = sum(len(d.x) for d in datasets)
    if PrefixCache.nbytes_for(net.base, front, net.T, samples) > prefix_module.BUDGET_BYTES:
        return None
    dev = next(net.parameters()).device

    def simulator(data: Dataset, before: PrefixCache | None):
        def run(rows: np.ndarray, keep: set[str]) -> dict[str, torch.Tensor]:
            given = before.given(rows, dev) if before is not None else None
            return net.spike_trains(torch.as_tensor(data.x[rows], device=dev), keep, given=given, codes=True)
        return run

    before = previous if previous is not None and len(previous) == len(datasets) else [None] * len(datasets)
    return [PrefixCache.build(simulator(d, b), net.base, front, net.T, len(d.x))
            for d, b in zip(datasets, before)]


def _val(m: dict[str, float]) -> dict[str, float]:
    return {f"val_{k}": round(v, 6) for k, v in m.items()}


def _fmt(m: dict[str, float]) -> str:
    if "accuracy" in m or "val_accuracy" in m:
        return f"acc {m.get('accuracy', m.get('val_accuracy')):.4f}"
    return f"loss {m.get('loss', m.get('val_loss')):.5f}"


def _summary(stage: int, name: str, first: dict, best: dict, best_epoch: int, lr: float) -> dict:
    return {"stage": stage, "layer": name, "converted": _val(first), "best": _val(best),
            "best_epoch": best_epoch, "lr": lr}


def _bar(enabled: bool, total: int):
    if not enabled or total <= 0:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc="tuning", unit="epoch", leave=False)

