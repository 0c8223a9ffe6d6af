"""Progressive tandem learning end to end: the scheduler, constraints on the saved artifact,
the CLI's tuning options and their bad inputs, checkpoints and --resume."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from snncompile.passes.convert import ConversionOptions
from snncompile.data import Dataset
from snncompile.errors import UsageError
from snncompile.ir.structure import population_fanin, weight_bits
from snncompile.app.compile import CompileRequest, compile_model
from snncompile.ir.serialize import load_graph
from snncompile.tune import objective
from snncompile.tune import ptl as schedule
from snncompile.targets.rules import violations
from snncompile.tune.model import TandemNet
from snncompile.tune.options import TrainOptions
from snncompile.tune.ptl import tune


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snncompile", *args], capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def small_net():
    """A converted 6-8-3 MLP and a toy data set."""
    import io
    import warnings

    import onnx
    import torch.nn as nn

    from snncompile.calibrate.statistics import activation_scales
    from snncompile.passes.convert import convert
    from snncompile.frontend import import_onnx

    torch.manual_seed(0)
    f = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(f, (torch.zeros(1, 6),), buf, dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    model = onnx.load_from_string(buf.getvalue())
    rng = np.random.default_rng(0)
    x = rng.random((96, 6)).astype(np.float32)
    y = (x[:, 0] * 3).astype(np.int64).clip(0, 2)
    ann = import_onnx(model).graph
    # input once (the default until 2026-12-06): the distillation test needs a converted
    # network that agrees with its ANN less well than tuning can make it
    g = convert(ann, activation_scales(model, ann, x),
                ConversionOptions(timesteps=4, weight_bits=8, input_mode="once"))
    return g, Dataset(x=x, y=y, path="train"), Dataset(x=x[:48], y=y[:48], path="val")


def test_scheduler_patience_reloads_best_and_fixes_layers(small_net, monkeypatch):
    g, train, val = small_net
    net = TandemNet(g, bits=8)
    script = iter([0.5, 0.6, 0.55, 0.55,          # stage 1: best at epoch 1, patience 2 ends it
                   0.4, 0.45, 0.5, 0.45, 0.45,    # stage 2: best at epoch 2
                   0.7, 0.6, 0.6])                # stage 3: nothing beats the converted network
    snapshots: dict[tuple[int, int], dict] = {}
    calls: list[int] = []

    def fake_eval(n, data, batch_size=256, prefix=None):
        calls.append(n.stage)
        epoch = sum(1 for s in calls if s == n.stage) - 1
        snapshots[(n.stage, epoch)] = {k: v.clone() for k, v in n.state_dict().items()}
        return {"accuracy": next(script), "loss": 1.0}

    monkeypatch.setattr(objective, "evaluate", fake_eval)
    res = tune(net, train, val, TrainOptions(epochs=30, patience=2, batch_size=32, recalibrate=False,
                                             joint_final=False))
    per_stage = [[h["epoch"] for h in res.history if h["stage"] == s] for s in (1, 2, 3)]
    assert per_stage == [[0, 1, 2, 3], [0, 1, 2, 3, 4], [0, 1, 2]]
    assert [s["best_epoch"] for s in res.stages] == [1, 2, 0]
    assert [s["lr"] for s in res.stages] == [1e-3, 1e-3, 1e-4]
    final = net.state_dict()
    first_layer = f"weight.{net.key[net.constrained(1)[0]]}"
    # layer 1 ends with stage 1's best weights and stays fixed through stages 2 and 3
    assert torch.equal(final[first_layer], snapshots[(1, 1)][first_layer])
    # stage 3 found nothing better than its start: its start (= stage 2's best) is restored
    for k in final:
        assert torch.equal(final[k], snapshots[(3, 0)][k]), k
    assert not torch.equal(snapshots[(2, 2)]["weight.n1"], snapshots[(2, 0)]["weight.n1"])


@pytest.mark.parametrize("joint", [False, True])
def test_joint_final_stage_trains_every_layer(small_net, monkeypatch, joint):
    """With ``joint_final`` the last stage (output constrained, every layer spiking) trains
    the layers fixed in earlier stages too, at the final learning rate, and the fan-in
    masks still hold; without it those layers stay as their stage left them."""
    g, train, val = small_net
    net = TandemNet(g, bits=8, fanin=4, prune_lead=99)
    score = iter(np.linspace(0.1, 0.9, 40))  # every epoch improves: each stage keeps its last state
    monkeypatch.setattr(objective, "evaluate",
                        lambda n, d, batch_size=256, prefix=None: {"accuracy": next(score), "loss": 1.0})
    after: dict[int, dict] = {}
    res = tune(net, train, val, TrainOptions(epochs=8, patience=9, batch_size=32, recalibrate=False,
                                             joint_final=joint),
               on_stage_end=lambda s: after.update({s: {k: v.clone() for k, v in net.state_dict().items()}}))
    assert [s["stage"] for s in res.stages] == [0, 1, 2, 3] and res.stages[-1]["lr"] == 1e-4
    first = f"weight.{net.key[net.weighted[0]]}"
    assert torch.equal(after[2][first], after[1][first])  # fixed through stage 2 either way
    assert torch.equal(after[3][first], after[2][first]) is (not joint)
    assert violations(net.to_graph(), bits=8, fanin=4) == []


def _count_error(net: TandemNet, layer: str, x: torch.Tensor, lam: np.ndarray) -> np.ndarray:
    """Per channel, the squared error of the T-level count (rounded: a half-threshold initial
    membrane) with scale ``lam`` against ``layer``'s ANN activation at the current stage."""
    _, vals, _ = net._values(x)
    a = net._ann_activation(layer, vals[net.base[layer].inputs[0]]).detach().double().numpy()
    lam = np.asarray(lam, np.float64).reshape(-1, 1)
    a = a.reshape(1, -1) if lam.size == 1 else a.reshape(len(a), a.shape[1], -1).transpose(1, 0, 2).reshape(a.shape[1], -1)
    return ((lam * np.clip(np.floor(net.T * a / lam + 0.5), 0, net.T) / net.T - a) ** 2).mean(axis=1)


def test_thresholds_fitted_to_t_count_the_activation_closer(small_net):
    """A threshold re-derived with ``fit`` is the fraction of the percentile's scale whose
    T-level count has the least squared error on the layer's activation: never more error
    than the percentile itself, less over the layer; tuning re-derives thresholds so by
    default (``fit_thresholds``), and at the percentile without it."""
    g, train, val = small_net
    x = torch.as_tensor(train.x)
    net = TandemNet(g, bits=8)
    for layer in net.layers:
        pct = net.recalibrate(layer, x, 99.9)
        fit = net.recalibrate(layer, x, 99.9, fit=True)
        assert np.all(fit <= pct) and np.any(fit < pct)
        e_pct, e_fit = _count_error(net, layer, x, pct), _count_error(net, layer, x, fit)
        assert np.all(e_fit <= e_pct + 1e-12) and e_fit.sum() < e_pct.sum(), (e_fit, e_pct)
    first = net.layers[0]
    expect = {}
    for f in (False, True):
        fresh = TandemNet(g, bits=8)
        fresh.set_stage(1)  # the first layer spiking, its weights quantized: where tuning derives it
        expect[f] = fresh.recalibrate(first, x, 99.9, fit=f)
    assert TrainOptions().fit_thresholds
    for f in (False, True):
        tuned = TandemNet(g, bits=8)
        tune(tuned, train, val, TrainOptions(epochs=0, fit_thresholds=f), calib_x=train.x)
        assert np.allclose(tuned.lam_0.numpy(), expect[f]), f


@pytest.mark.parametrize("count_aware", [False, True])
def test_percentile_search_keeps_the_candidate_that_validates_best(small_net, monkeypatch, count_aware):
    """Each layer, as its stage converts it, tries every candidate percentile; the one whose
    network scores best on validation sets its threshold (ties: the first candidate).
    Count-aware, a layer still modelled at the first stage has its scale re-measured at
    ``percentile`` (its count model's levels) for every candidate of the layer before it,
    since that layer's scale sets its inputs; its own search still decides its own."""
    g, train, val = small_net
    net = TandemNet(g, bits=8)
    favourite = {net.layers[0]: 98.0, net.layers[1]: 99.99}
    calls: list[tuple[str, float, np.ndarray]] = []
    recalibrate = net.recalibrate

    def spy(layer, x, percentile=99.9, batch_size=256, fit=False):
        calls.append((layer, percentile, recalibrate(layer, x, percentile, batch_size, fit)))
        return calls[-1][2]

    def fake_eval(n, data, batch_size=256, prefix=None):  # the favourite scores best, the others by distance
        layer = n.layers[min(n.stage, len(n.layers)) - 1]  # the layer this stage converts (or the last)
        p = [c[1] for c in calls if c[0] == layer][-1]
        return {"accuracy": 1.0 - abs(p - favourite[layer]) / 100, "loss": 1.0}

    monkeypatch.setattr(net, "recalibrate", spy)
    monkeypatch.setattr(objective, "evaluate", fake_eval)
    grid = (97.0, 98.0, 99.0, 99.9, 99.99)
    res = tune(net, train, val, TrainOptions(epochs=0, percentile_search=grid, count_aware=count_aware))
    for j, layer in enumerate(net.layers):
        rec = res.stages[j]["percentiles"][layer]
        assert rec["chosen"] == favourite[layer] and list(rec["val"]) == ["97", "98", "99", "99.9", "99.99"]
        tried = [c for c in calls if c[0] == layer]
        # count-aware, the first stage (it converts layer 0) re-measures layer 1 after each of
        # layer 0's candidates and its winner, and once more after the search
        first = [99.9] * (len(grid) + 2) if count_aware and j > 0 else []
        assert [c[1] for c in tried] == [*first, *grid, favourite[layer]]  # then set to the winner
        assert np.allclose(getattr(net, f"lam_{j}").numpy(), tried[-1][2])
        assert not np.allclose(tried[len(first)][2], tried[-1][2])  # the candidates do differ
    calls.clear()
    monkeypatch.setattr(objective, "evaluate", lambda n, d, batch_size=256, prefix=None: {"accuracy": 0.5, "loss": 1.0})
    res = tune(TandemNet(g, bits=8), train, val, TrainOptions(epochs=0, percentile_search=grid))
    assert [st["percentiles"][layer]["chosen"] for st, layer in zip(res.stages, net.layers)] == [97.0, 97.0]
    with pytest.raises(UsageError, match="percentile candidates must lie in"):
        TrainOptions(percentile_search=(99.0, 101.0)).check()


def test_distillation_follows_the_float_ann(small_net, monkeypatch):
    """With ``distill`` the training loss pulls the network toward the float ANN's outputs,
    taken once before tuning: trained on labels that are all 0, pure distillation brings the
    integer network closer to the ANN's predictions while the plain loss learns the labels."""
    g, train, val = small_net
    ann = TandemNet(g, bits=8)
    with torch.no_grad():
        expected = ann(torch.as_tensor(train.x))
    zeros = Dataset(x=train.x, y=np.zeros_like(train.y), path="zeros")
    seen: list[torch.Tensor] = []
    run_stage = schedule._run_stage

    def spy(*a, teacher=None, **kw):
        seen.append(teacher)
        return run_stage(*a, teacher=teacher, **kw)

    monkeypatch.setattr(schedule, "_run_stage", spy)
    score = iter(np.linspace(0.1, 0.9, 200))  # every epoch improves: each stage keeps its last state
    monkeypatch.setattr(objective, "evaluate",
                        lambda n, d, batch_size=256, prefix=None: {"accuracy": next(score), "loss": 1.0})
    agree = {}
    for share in (None, 0.0, 1.0):  # None: converted stage by stage, not trained
        net = TandemNet(g, bits=8)
        tune(net, zeros, val, TrainOptions(epochs=0 if share is None else 24, patience=99, batch_size=16,
                                           lr=1e-2, final_lr=1e-2, recalibrate=False, distill=share or 0.0,
                                           distill_temperature=2.0))
        with torch.no_grad():
            out = net(torch.as_tensor(train.x))
        agree[share] = float((out.argmax(1) == expected.argmax(1)).float().mean())
        if share:
            assert len(seen) == 3 and all(torch.allclose(t, expected, atol=1e-5) for t in seen)
        elif share == 0.0:
            assert seen == [None] * 3 and float((out.argmax(1) == 0).float().mean()) > 0.9
        seen.clear()
    assert float((expected.argmax(1) == 0).float().mean()) < 0.7  # the labels do differ from the ANN
    # distilled: closer to the ANN than the converted network it started from (0.64 -> 0.76)
    assert agree[1.0] > agree[None] + 0.05 and agree[0.0] < 0.1


def test_distillation_loss_mixes_task_and_match():
    y = torch.tensor([0, 2])
    out = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    ce = torch.nn.functional.cross_entropy(out, y)
    assert torch.isclose(objective.distill_loss(out, y, out + 3.0, True, 0.0, 4.0), ce)
    assert float(objective.distill_loss(out, y, out + 3.0, True, 1.0, 4.0)) == pytest.approx(0.0, abs=1e-6)
    half = objective.distill_loss(out, y, torch.zeros_like(out), True, 0.5, 1.0)
    assert float(half) > 0.5 * float(ce)
    reg = objective.distill_loss(out, out + 1.0, out - 1.0, False, 0.25, 1.0)
    assert float(reg) == pytest.approx(0.75 * 1.0 + 0.25 * 1.0)
    for bad in (TrainOptions(distill=1.5), TrainOptions(distill=0.5, distill_temperature=0.0)):
        with pytest.raises(UsageError, match="--distill"):
            bad.check()


def test_an_ann_stage_runs_only_where_a_mask_prunes_before_the_first_layer_spikes(small_net):
    """Stage 0 fine-tunes the fan-in masks imposed before any layer spikes; where those
    prune nothing (here the first layer keeps all 6 inputs within a limit of 7) it is not
    run, and the masks ``prune_lead`` stages ahead come with the spiking stages."""
    g, _, _ = small_net  # fan-in 6, 8, 8

    def plan(fanin: int, lead: int) -> list[int]:
        return schedule.stage_plan(TandemNet(g, bits=8, fanin=fanin, prune_lead=lead), "ptl")

    assert plan(4, 1) == [0, 1, 2, 3]  # the first layer's mask (6 -> 4) is due at stage 0
    assert plan(7, 1) == [1, 2, 3]     # it keeps all 6: the second's comes with stage 1
    assert plan(7, 2) == [0, 1, 2, 3]  # the second's (8 -> 7) is due at stage 0 as well
    assert plan(7, 0) == [1, 2, 3] and plan(16, 99) == [1, 2, 3]


def test_epoch_budget_is_shared_by_stages(small_net):
    """Each stage gets an equal share of the epochs left, rounded down: the remainder goes
    to the last stages, the cheapest per epoch."""
    g, train, val = small_net
    res = tune(TandemNet(g), train, val, TrainOptions(epochs=5, patience=99, batch_size=48))
    assert res.epochs == 5
    assert [len([h for h in res.history if h["stage"] == s]) - 1 for s in (1, 2, 3)] == [1, 2, 2]
    none = tune(TandemNet(g), train, val, TrainOptions(epochs=0))
    assert none.epochs == 0 and len(none.history) == 3  # converted stage by stage, untrained


def _denormal_survives() -> bool:
    return torch.tensor([1e-39]).mul(1.0).item() != 0.0


def test_tuning_flushes_denormals_and_then_restores_them(small_net):
    """Tuning steps run with denormal floats flushed to zero (on x86 a denormal costs tens
    of times a normal float, and a tuned network's gradients are tiny), and the process
    gets torch's default back afterwards, also when tuning fails."""
    g, train, val = small_net
    seen = []

    def loss(net, x, y):
        seen.append(_denormal_survives())
        return torch.nn.functional.cross_entropy(net(x), y.long())

    assert _denormal_survives()
    tune(TandemNet(g), train, val, TrainOptions(epochs=2, batch_size=48), step_loss=loss)
    assert seen and not any(seen)
    assert _denormal_survives()

    def broken(net, x, y):
        raise RuntimeError("a step that fails")

    with pytest.raises(RuntimeError, match="fails"):
        tune(TandemNet(g), train, val, TrainOptions(epochs=1, batch_size=48), step_loss=broken)
    assert _denormal_survives()


def test_tuning_keeps_a_steps_memory_for_the_next(small_net, monkeypatch):
    """Tuning sets glibc's mmap threshold to its dynamic maximum (32 MiB) and the trim
    threshold to twice that, and nothing where the C library is not glibc."""
    from snncompile.tune.runtime import allocator
    from snncompile.tune import ptl as schedule

    calls = []

    class FakeLibc:
        def mallopt(self, param, value):
            calls.append((param, value))
            return 1

    assert allocator.keep_step_memory(FakeLibc())
    assert calls == [(allocator.M_MMAP_THRESHOLD, 32 * 2 ** 20), (allocator.M_TRIM_THRESHOLD, 64 * 2 ** 20)]
    monkeypatch.setattr(allocator, "_libc", lambda: None)
    assert not allocator.keep_step_memory()
    if sys.platform.startswith("linux") and "glibc" in " ".join(platform.libc_ver()):
        monkeypatch.undo()
        assert allocator.keep_step_memory()  # the real mallopt takes both values
    used = []
    monkeypatch.setattr(schedule, "keep_step_memory", lambda: used.append(True))
    g, train, val = small_net
    tune(TandemNet(g), train, val, TrainOptions(epochs=1, batch_size=48))
    assert used == [True]


@pytest.mark.parametrize("epochs, stages, caps", [
    (21, 6, [3, 3, 3, 4, 4, 4]),  # the Fashion-MNIST example at --prune-ahead 0
    (21, 7, [3] * 7),
    (60, 7, [8, 8, 8, 9, 9, 9, 9]),
    (2, 3, [1, 1, 0]),            # fewer epochs than stages: the first stages train
    (0, 3, [0, 0, 0]),
])
def test_stage_shares_round_down_towards_the_last_stages(epochs, stages, caps):
    got, left = [], epochs
    for i in range(stages):
        got.append(schedule.stage_share(left, stages - i))
        left -= got[-1]
    assert got == caps


def test_count_aware_scores_layers_not_spiking_on_their_count_model(small_net):
    """``count_aware`` reaches the network the schedule scores: untrained, a stage with a
    layer still on the ANN side scores differently with it (that layer passes its count
    model's value, not its ReLU); the last stage, every layer spiking, the same."""
    g, train, val = small_net
    runs = {flag: tune(TandemNet(g), train, val, TrainOptions(epochs=0, count_aware=flag))
            for flag in (False, True)}
    loss = {flag: [h["val_loss"] for h in r.history] for flag, r in runs.items()}
    assert len(loss[True]) == 3
    assert loss[True][0] != loss[False][0]  # stage 1: layer 2 modelled or relu
    assert loss[True][-1] == loss[False][-1]  # all spiking


@pytest.mark.parametrize("method", ["ptl", "tandem", "ltl"])
def test_only_ptl_models_counts_on_its_ann_stages(small_net, method):
    """Count-aware is the default, but only PTL's ANN stages hand on to spiking ones: LTL's
    ANN stage trains its teacher, whose activations must stay the ANN's."""
    from snncompile.tune.methods import get_method

    g, train, val = small_net
    net = TandemNet(g, bits=8)
    assert TrainOptions().count_aware
    get_method(method).train(net, train, val, TrainOptions(epochs=0, method=method))
    assert net.count_aware is (method == "ptl")


def test_regression_targets_tune_on_validation_loss(small_net):
    """Float targets: MSE loss, the scheduler keeps the lowest validation loss."""
    g, train, val = small_net
    w = np.random.default_rng(1).random((6, 3)).astype(np.float32)
    tr = Dataset(x=train.x, y=train.x @ w, path="train")
    va = Dataset(x=val.x, y=val.x @ w, path="val")
    net = TandemNet(g, bits=8)
    res = tune(net, tr, va, TrainOptions(epochs=9, patience=3, batch_size=32))
    assert all("val_accuracy" not in h for h in res.history)
    first, last = res.history[0]["val_loss"], res.stages[-1]["best"]["val_loss"]
    assert last < first
    for st in res.stages:  # the kept state is the stage's lowest loss
        losses = [h["val_loss"] for h in res.history if h["stage"] == st["stage"]]
        assert st["best"]["val_loss"] == min(losses)


@pytest.mark.parametrize("epochs", [4, 12])
def test_gradual_pruning_ends_exactly_at_the_budget(small_net, epochs):
    """Kept weights halve epoch by epoch in the ANN stage 0 (8 -> 4 -> 2 here); a budget too
    short for the ramp still ends with every mask at its limit."""
    g, train, val = small_net
    net = TandemNet(g, bits=8, fanin=2, prune_lead=99)
    res = tune(net, train, val, TrainOptions(epochs=epochs, gradual=True, batch_size=48))
    assert [s["stage"] for s in res.stages] == [0, 1, 2, 3]
    assert bool(net.masked.all())
    assert violations(net.to_graph(), bits=8, fanin=2) == []
    kept = [int(net.mask(n).reshape(net.mask(n).shape[0], -1).sum(1).max()) for n in net.weighted]
    assert kept == [2, 2, 2]


# The fan-in the tuned digits CNN is held to: small enough that pruning without tuning costs
# it accuracy (at 64, with relays after its pools, conversion alone keeps about 0.94).
TUNED_FANIN = 16


@pytest.fixture(scope="module")
def tuned(digits_dir, tmp_path_factory):
    """PTL on digits with 8-bit weights and fan-in 16, a small epoch budget."""
    out = tmp_path_factory.mktemp("ptl") / "snn"
    d = digits_dir
    r = run("convert", str(d / "digits_cnn.onnx"), "-o", str(out), "--calib", str(d / "calib.npz"),
            "--timesteps", "8", "--bits", "8", "--fanin", str(TUNED_FANIN), "--train", str(d / "train.npz"),
            "--val", str(d / "val.npz"), "--epochs", "8", "--patience", "3")
    assert r.returncode == 0, r.stderr
    # the schedule, as it runs: conv1, the relay after pool1, conv2, the relay after pool2, fc1, output
    assert "stage 6/6 (output)" in r.stderr and "epoch 1/" in r.stderr
    return out


@pytest.mark.slow
def test_tuned_artifact_meets_constraints_exactly(tuned):
    g = load_graph(tuned)
    assert violations(g, bits=8, fanin=TUNED_FANIN) == []
    for n in g.nodes:
        if n.is_weighted:
            assert n.weight_int.dtype.kind == "i" and weight_bits(n) <= 8
            assert np.abs(n.weight_int).max() <= 127
        if n.op == "if":
            assert n.threshold.dtype.kind == "i" and n.threshold.min() >= 1
    fanins = {n.name: population_fanin(g, n.name) for n in g.nodes if n.op == "if"}
    assert max(fanins.values()) <= TUNED_FANIN and min(fanins.values()) > 0
    assert (tuned / "checkpoints" / "stage_6.npz").is_file()
    info = json.loads((tuned / "compile.json").read_text())
    assert info["constraints"] == {"bits": 8, "fanin": TUNED_FANIN}
    assert [s["stage"] for s in info["tuning"]["stages"]] == [0, 1, 2, 3, 4, 5, 6]  # 0: ANN, masks in force
    assert info["tuning"]["epochs"] <= 8


@pytest.mark.slow
def test_tuning_recovers_accuracy_lost_to_constraints(tuned, digits_dir, tmp_path):
    """The same limits imposed without tuning cost far more accuracy (fan-in 16 prunes conv2
    to 16 of its 144 weights per output, fc1 to 16 of 128, the logits to 16 of 64)."""
    plain = tmp_path / "plain"
    d = digits_dir
    r = run("convert", str(d / "digits_cnn.onnx"), "-o", str(plain), "--calib", str(d / "calib.npz"),
            "--timesteps", "8", "--bits", "8", "--fanin", str(TUNED_FANIN))
    assert r.returncode == 0, r.stderr
    assert f"warning: --fanin {TUNED_FANIN} pruned" in r.stderr
    scores = {}
    for name, out in (("plain", plain), ("tuned", tuned)):
        e = run("evaluate", str(out), "--data", str(d / "test.npz"), "--json")
        assert e.returncode == 0, e.stderr
        scores[name] = json.loads(e.stdout)
        assert scores[name]["max_weight_bits"] <= 8 and scores[name]["max_fanin"] <= TUNED_FANIN
    assert scores["tuned"]["snn_accuracy"] >= scores["plain"]["snn_accuracy"] + 0.2
    text = run("evaluate", str(tuned), "--data", str(d / "test.npz"))
    assert "max weight bits: 8 (limit 8)" in text.stdout and f"(limit {TUNED_FANIN})" in text.stdout


@pytest.mark.slow
def test_resume_after_interruption_gives_the_same_artifact(digits_dir, tmp_path):
    d = digits_dir
    tr = np.load(d / "train.npz")
    np.savez(tmp_path / "train300.npz", x=tr["x"][:300], y=tr["y"][:300])  # keeps the test quick

    def request(out, **kw):
        return CompileRequest(model=str(d / "digits_cnn.onnx"), out=str(out), calib=str(d / "calib.npz"),
                              train=str(tmp_path / "train300.npz"), val=str(d / "val.npz"), epochs=5,
                              patience=2,
                              options=ConversionOptions(timesteps=4, weight_bits=6), fanin=200, **kw)

    compile_model(request(tmp_path / "full"))

    def stop(stage):
        if stage == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        compile_model(request(tmp_path / "cut", on_stage_end=stop))
    assert sorted(p.name for p in (tmp_path / "cut").iterdir()) == ["checkpoints"]
    with pytest.raises(Exception, match="--resume"):
        compile_model(request(tmp_path / "cut"))
    compile_model(request(tmp_path / "cut", resume=True))
    a = json.loads((tmp_path / "full" / "ir.json").read_text())
    b = json.loads((tmp_path / "cut" / "ir.json").read_text())
    assert a == b
    with np.load(tmp_path / "full" / "ir.npz") as fa, np.load(tmp_path / "cut" / "ir.npz") as fb:
        assert fa.files == fb.files
        for k in fa.files:
            np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)
    ia = json.loads((tmp_path / "full" / "compile.json").read_text())["tuning"]
    ib = json.loads((tmp_path / "cut" / "compile.json").read_text())["tuning"]
    assert [h["val_accuracy"] for h in ia["history"]] == [h["val_accuracy"] for h in ib["history"]]
    # a resumed run with other settings is refused, naming what differs
    with pytest.raises(Exception, match="differs in: fanin"):
        compile_model(CompileRequest(**{**request(tmp_path / "cut", resume=True).__dict__, "fanin": 100}))


def _bad_data(tmp_path: Path, digits_dir: Path, kind: str) -> Path:
    v = np.load(digits_dir / "val.npz")
    x, y = v["x"], v["y"]
    if kind == "shape":
        x = x[:, :, :4, :]
    elif kind == "labels":
        y = y + 5
    elif kind == "one_class":
        y = np.zeros_like(y)
    p = tmp_path / f"{kind}.npz"
    np.savez(p, x=x, y=y)
    return p


@pytest.mark.parametrize("case,expect", [
    ("val_without_train", "--val was given without --train"),
    ("train_without_val", "--train needs --val"),
    ("fanin0", "Invalid value for '--fanin': 0 is not in the range x>=1"),
    ("fanin_small", "--fanin 3 is too small for layer"),
    ("bits1", "Invalid value for '--bits': 1 is not in the range 2<=x<=24"),
    ("shape", "but the model takes"),
    ("labels", "but the model has 10 outputs"),
    ("one_class", "only one class"),
    ("patience0", "Invalid value for '--patience': 0 is not in the range x>=1"),
    ("cuda", "no CUDA device"),
])
def test_bad_tuning_input_is_one_clear_message(case, expect, digits_dir, tmp_path):
    if case == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the error cannot occur")
    d = digits_dir
    out = tmp_path / "out"
    base = ["convert", str(d / "digits_cnn.onnx"), "-o", str(out), "--calib", str(d / "calib.npz")]
    train = ["--train", str(d / "train.npz")]
    val = ["--val", str(d / "val.npz")]
    args = {
        "val_without_train": val, "train_without_val": train, "fanin0": ["--fanin", "0"],
        "fanin_small": ["--fanin", "3"] + train + val, "bits1": ["--bits", "1"] + train + val,
        "shape": train + ["--val", str(_bad_data(tmp_path, d, "shape"))],
        "labels": train + ["--val", str(_bad_data(tmp_path, d, "labels"))],
        "one_class": train + ["--val", str(_bad_data(tmp_path, d, "one_class"))],
        "patience0": train + val + ["--patience", "0"],
        "cuda": train + val + ["--device", "cuda"],
    }[case]
    r = run(*base, *args)
    assert r.returncode != 0
    assert expect in r.stderr and r.stderr.startswith("error:")
    assert "Traceback" not in r.stderr
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


def test_regression_scores_and_target_checks():
    from snncompile.errors import DataError

    y = np.array([[0.0, 1.0], [0.5, 0.25]], np.float32)
    pred = y + np.array([[0.1, -0.1], [0.1, -0.1]], np.float32)
    s = Dataset(x=np.zeros((2, 3), np.float32), y=y, path="d").score(pred)
    assert s["mse"] == pytest.approx(0.01, rel=1e-5)
    assert s["psnr"] == pytest.approx(20.0, rel=1e-4)  # peak = range of y = 1
    Dataset(x=np.zeros((2, 3)), y=y, path="d").check_targets((2,))
    with pytest.raises(DataError, match="targets y have shape"):
        Dataset(x=np.zeros((2, 3)), y=y, path="d").check_targets((3,))


@pytest.mark.slow
def test_two_processes_under_torchrun(digits_dir, tmp_path):
    """The same command under torchrun (2 CPU processes, gloo): batches split between the
    processes, gradients averaged, rank 0 alone reports and writes."""
    d = digits_dir
    tr = np.load(d / "train.npz")
    np.savez(tmp_path / "train300.npz", x=tr["x"][:300], y=tr["y"][:300])
    out = tmp_path / "ddp"
    torchrun = Path(sys.executable).with_name("torchrun")
    r = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "snncompile", "convert",
                        str(d / "digits_cnn.onnx"), "--calib", str(d / "calib.npz"), "-T", "4", "--bits", "8",
                        "--fanin", "100", "--train", str(tmp_path / "train300.npz"), "--val",
                        str(d / "val.npz"), "--epochs", "5", "-o", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("wrote ") == 1  # one report, from rank 0
    info = json.loads((out / "compile.json").read_text())
    assert info["tuning"]["world_size"] == 2
    # stage 0 (conv2 and fc1 pruned to 100 ahead of spiking), then the six layers (the pools' relays included)
    assert [s["stage"] for s in info["tuning"]["stages"]] == [0, 1, 2, 3, 4, 5, 6]
    g = load_graph(out)
    assert violations(g, bits=8, fanin=100) == []
    e = run("evaluate", str(out), "--data", str(d / "test.npz"), "--json")
    assert e.returncode == 0 and json.loads(e.stdout)["snn_accuracy"] > 0.85


@pytest.mark.slow
def test_ctrl_c_then_resume_from_the_command_line(digits_dir, tmp_path):
    """A real SIGINT once stage 1 is checkpointed: exit 130 with a --resume hint, OUT holds
    only checkpoints; the same command with --resume finishes the run."""
    import signal
    import time

    d = digits_dir
    tr = np.load(d / "train.npz")
    np.savez(tmp_path / "train300.npz", x=tr["x"][:300], y=tr["y"][:300])
    out = tmp_path / "snn"
    args = [sys.executable, "-m", "snncompile", "convert", str(d / "digits_cnn.onnx"), "--calib",
            str(d / "calib.npz"), "-T", "4", "--bits", "8", "--train", str(tmp_path / "train300.npz"),
            "--val", str(d / "val.npz"), "--epochs", "40", "--patience", "10", "-o", str(out)]
    # A shell's background job inherits SIGINT as ignored, and Python then installs no
    # KeyboardInterrupt handler: restore the default so the test means the same everywhere.
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while not (out / "checkpoints" / "stage_1.json").exists():
        assert proc.poll() is None and time.time() < deadline, "no checkpoint of stage 1 appeared"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.fail("the run finished before the interrupt arrived")
    assert proc.returncode == 130 and "--resume" in err and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints"]
    r = subprocess.run(args + ["--resume"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "loaded from checkpoint" in r.stderr
    assert violations(load_graph(out), bits=8) == []


@pytest.mark.slow
def test_count_model_bench_separates_the_losses(digits_dir):
    """bench/count_model.py (docs/log/): trains the masked network on its count
    model and reports that network's accuracy and its untuned SNN's, on the test split."""
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, str(root / "bench/count_model.py"), "--data", str(digits_dir),
                        "--timesteps", "4", "--epochs", "2"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout.strip().splitlines()[-1])
    assert row["hidden"] == "count model" and row["T"] == 4
    assert row["best_epoch"] >= 1 and row["val"] > row["val_untrained"]  # it trained
    assert 0 < row["test"] <= 1 and 0 < row["snn_test_untuned"] <= 1


def test_count_error_bench_separates_the_dynamics(digits_dir, tmp_path):
    """bench/count_error.py (docs/log/): per IF layer, how often the count differs
    from what the layer's total charge warrants. With the input once, the first layer takes
    the input's charge all at t = 0, so it fires exactly what its charge warrants; deeper layers get theirs spread
    over the window, and some neuron fires a spike later inhibition would have cancelled."""
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "snn"
    compile_model(CompileRequest(model=str(digits_dir / "digits_cnn.onnx"), out=str(out),
                                 calib=str(digits_dir / "calib.npz"),
                                 options=ConversionOptions(timesteps=4, input_mode="once")))
    r = subprocess.run([sys.executable, str(root / "bench/count_error.py"), str(out), "--data",
                        str(digits_dir / "test.npz"), "--samples", "200"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    layers = json.loads(r.stdout.strip().splitlines()[-1])["layers"]
    assert len(layers) >= 2
    first, deeper = layers[0], layers[1:]
    assert first["count"] > 0 and first["count"] == first["warranted"]
    assert first["more"] == first["fewer"] == 0
    assert any(row["more"] > 0 for row in deeper)
    for row in layers:  # the mean difference is what the extra and missing spikes add up to
        assert 0 <= row["more_active"] <= 1 and 0 <= row["fewer_active"] <= 1
        assert abs(row["count"] - row["warranted"]) <= 4 * (row["more"] + row["fewer"]) + 1e-12
    # signed spikes take back what later inhibition cancels: the counts come (almost) exactly
    # to what the charge warrants (one -1 per step is the limit)
    compile_model(CompileRequest(model=str(digits_dir / "digits_cnn.onnx"), out=str(tmp_path / "signed"),
                                 calib=str(digits_dir / "calib.npz"),
                                 options=ConversionOptions(timesteps=4, spikes="signed", input_mode="once")))
    r = subprocess.run([sys.executable, str(root / "bench/count_error.py"), str(tmp_path / "signed"), "--data",
                        str(digits_dir / "test.npz"), "--samples", "200"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    signed = json.loads(r.stdout.strip().splitlines()[-1])["layers"]
    off = sum(row["more"] + row["fewer"] for row in signed)
    assert off <= 0.1 * sum(row["more"] + row["fewer"] for row in layers)
