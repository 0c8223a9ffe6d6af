"""The report's figures, drawn with matplotlib's object API on the Agg canvas (no pyplot,
so nothing global changes and no display is needed).

Each function takes the measured :class:`ReportData` and returns a ``Figure``; layers are
listed top to bottom in network order, as horizontal bars, so long layer names stay
readable. Every axis says what it counts and in which unit.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter, ScalarFormatter

from .measure import LayerFigures, ReportData

ANN_COLOR = "#444444"
SNN_COLOR = "#1f77b4"
QUANT_COLOR = "#d62728"
LIMIT_COLORS = ("#d62728", "#ff7f0e")
DPI = 110


def _layer_figure(n_layers: int, ncols: int = 1, width: float = 9.0) -> Figure:
    """A figure tall enough for ``n_layers`` horizontal bars (per panel)."""
    return Figure(figsize=(width, 1.6 + 0.55 * max(n_layers, 2)), dpi=DPI, layout="constrained")


def _layer_chart(layers: list[LayerFigures]):
    """A one-panel figure of horizontal bars, one per layer: (figure, axes, bar positions)."""
    fig = _layer_figure(len(layers))
    ax = fig.subplots()
    return fig, ax, _layer_axis(ax, layers)


def _layer_axis(ax, layers: list[LayerFigures]) -> np.ndarray:
    """Layer names on the y axis, first layer on top; returns the bar positions."""
    y = np.arange(len(layers))
    ax.set_yticks(y, [f"{l.name}\n({l.kind})" for l in layers], fontsize=8)
    ax.set_ylim(len(layers) - 0.5, -0.5)
    ax.set_ylabel("layer (network order)")
    return y


def _legend_below(ax, ncol: int = 2) -> None:
    """The legend under the axes, where it cannot cover bars, lines or labels."""
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=ncol, fontsize=8, frameon=False)


def _log2_steps(ax, ts: list[int]) -> None:
    """T on a log2 axis, ticks at the measured values, room for labels at both ends."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(ts, [str(t) for t in ts])
    ax.minorticks_off()
    ax.set_xlim(ts[0] / 1.35, ts[-1] * 1.5)
    ax.set_xlabel("time steps T (steps per sample)")


def _score(row: dict, task: str, who: str) -> float | None:
    if task == "classification":
        v = row.get(f"{who}_accuracy")
        return None if v is None else 100.0 * v
    return row.get(f"{who}_psnr")


def accuracy_vs_timesteps(rep: ReportData) -> Figure:
    """Left: the SNN's accuracy (PSNR for regression) against T with the ANN's as a line;
    right: SynOps per sample against T with the ANN's MACs per sample as a line."""
    fig = Figure(figsize=(11, 4.2), dpi=DPI, layout="constrained")
    ax, ax2 = fig.subplots(1, 2)
    ts = [r["timesteps"] for r in rep.sweep]
    label, unit = ("accuracy", "%") if rep.task == "classification" else ("PSNR", "dB")
    # An exact match has an infinite PSNR: drawn as a note, not a point.
    snn = [v if v is not None and np.isfinite(v) else np.nan for v in (_score(r, rep.task, "snn") for r in rep.sweep)]
    ann = _score(rep.sweep[-1], rep.task, "ann")
    ax.plot(ts, snn, "o-", color=SNN_COLOR, label="SNN (reference simulator)")
    for t, v in zip(ts, snn):
        if not np.isnan(v):
            ax.annotate(f"{v:.1f}", (t, v), textcoords="offset points", xytext=(5, -13), ha="left",
                        fontsize=8, color=SNN_COLOR)
    if ann is not None and np.isfinite(ann):
        ax.axhline(ann, color=ANN_COLOR, ls="--", label=f"ANN (onnxruntime): {ann:.2f} {unit}")
    elif ann is not None:
        ax.plot([], [], " ", label="ANN (onnxruntime): exact on these targets (infinite PSNR)")
    ax.axvline(rep.timesteps, color="#999999", ls=":", label=f"compiled T = {rep.timesteps}")
    _log2_steps(ax, ts)
    ax.set_ylabel(f"{label} on {rep.samples} samples ({unit})")
    ax.set_title(f"{label} against time steps")
    shown = [v for v in snn + [ann] if v is not None and np.isfinite(v)] or [0.0]
    lo, hi = min(shown), max(shown)
    pad = max(1.0, 0.08 * (hi - lo))
    ax.set_ylim(lo - 2 * pad, hi + pad)
    ax.grid(alpha=0.3)
    _legend_below(ax)

    syn = [r["synops_per_sample"] for r in rep.sweep]
    ax2.plot(ts, syn, "o-", color=SNN_COLOR, label="SNN SynOps per sample")
    macs = rep.evaluation["ann_macs_per_sample"]
    ax2.axhline(macs, color=ANN_COLOR, ls="--", label=f"ANN MACs per sample: {macs:,}")
    ax2.axvline(rep.timesteps, color="#999999", ls=":", label=f"compiled T = {rep.timesteps}")
    _log2_steps(ax2, ts)
    ax2.set_ylim(0, max(syn + [macs]) * 1.1)
    ax2.set_ylabel("operations per sample")
    ax2.set_title("SynOps against time steps")
    ax2.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax2.grid(alpha=0.3)
    _legend_below(ax2)
    return fig


def firing_rates(rep: ReportData) -> Figure:
    """Spikes per neuron per step of every spiking layer at the compiled T."""
    layers = [l for l in rep.layers if l.firing_rate is not None]
    fig, ax, y = _layer_chart(layers)
    rates = [l.firing_rate for l in layers]
    ax.barh(y, rates, color=SNN_COLOR, height=0.6)
    for yi, l in zip(y, layers):
        ax.text(l.firing_rate, yi, f" {l.firing_rate:.3f} ({l.spikes_per_sample:,.0f} spikes/sample)",
                va="center", fontsize=8)
    ax.set_xlim(0, max(rates + [0.01]) * 1.6)
    ax.set_xlabel(f"firing rate (spikes per neuron per time step; 1 = a spike every step), T = {rep.timesteps}")
    ax.set_title(f"Firing rate per layer ({rep.samples} samples)")
    ax.grid(axis="x", alpha=0.3)
    return fig


def synops_vs_macs(rep: ReportData) -> Figure:
    """Per layer, the SNN's synaptic events per sample beside the ANN's MACs per sample."""
    layers = rep.layers
    fig, ax, y = _layer_chart(layers)
    h = 0.38
    syn = np.array([l.synops_per_sample for l in layers])
    macs = np.array([l.macs_per_sample for l in layers], dtype=float)
    ax.barh(y - h / 2, macs, height=h, color=ANN_COLOR, label="ANN MACs per sample")
    ax.barh(y + h / 2, np.where(syn > 0, syn, np.nan), height=h, color=SNN_COLOR,
            label=f"SNN SynOps per sample (T = {rep.timesteps})")
    floor = max(1.0, float(np.min(np.concatenate([macs[macs > 0], syn[syn > 0]]), initial=1.0)) / 3)
    for yi, l, s, m in zip(y, layers, syn, macs):
        ax.text(m, yi - h / 2, f" {m:,.0f}", va="center", fontsize=7)
        if l.spike_driven:
            ratio = f" ({s / m:.2f} per MAC)" if m else ""
            ax.text(max(s, floor), yi + h / 2, f" {s:,.0f}{ratio}", va="center", fontsize=7)
        else:
            ax.text(floor, yi + h / 2, " reads the analog input: no SynOps", va="center", fontsize=7,
                    style="italic")
    ax.set_xscale("log")
    top = float(max(macs.max(initial=1.0), syn.max(initial=1.0)))
    ax.set_xlim(floor, top * 30)
    ax.set_xlabel("operations per sample (log scale)")
    ax.set_title("SynOps against ANN MACs, per layer")
    _legend_below(ax)
    ax.grid(axis="x", alpha=0.3, which="major")
    return fig


def weight_histograms(rep: ReportData) -> Figure:
    """Per weighted node, the float weights and the real values its integers stand for."""
    ws = rep.weights
    ncols = 1 if len(ws) < 2 else 2 if len(ws) <= 8 else 3
    nrows = max(1, math.ceil(len(ws) / ncols))
    fig = Figure(figsize=(5.2 * ncols, 0.6 + 2.9 * nrows), dpi=DPI, layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    for ax, w in zip(axes, ws):
        lo = float(min(w.float_weights.min(initial=0.0), w.quantized_weights.min(initial=0.0)))
        hi = float(max(w.float_weights.max(initial=0.0), w.quantized_weights.max(initial=0.0)))
        bins = np.linspace(lo, hi, 61) if hi > lo else 10
        counts, _, _ = ax.hist(w.float_weights, bins=bins, color=ANN_COLOR, alpha=0.45, label="float weights (before quantization)")
        ax.hist(w.quantized_weights, bins=bins, histtype="step", color=QUANT_COLOR, lw=1.4,
                label="integer weights x scale (after quantization)")
        log = counts.max(initial=0) > 50  # a log axis only where counts span decades
        if log:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(ScalarFormatter())
            ax.yaxis.set_minor_formatter(NullFormatter())
        zeros = float(np.mean(w.quantized_weights == 0))
        err = float(np.abs(w.float_weights - w.quantized_weights).max(initial=0.0))
        ax.set_title(f"layer {w.layer} (node {w.name})\n{w.bits}-bit, {w.float_weights.size:,} weights, "
                     f"{zeros:.0%} zero after, largest change {err:.2g}", fontsize=8)
        ax.set_xlabel("weight value (real units of the float model)", fontsize=8)
        ax.set_ylabel("weights per bin" + (" (log scale)" if log else ""), fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes[len(ws):]:
        ax.set_axis_off()
    fig.suptitle("Weights before and after quantization")
    if ws:
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=2, fontsize=8,
                   frameon=False)
    return fig


def fanin(rep: ReportData) -> Figure:
    """Largest fan-in per layer (synapses into one neuron) against the limits that apply."""
    layers = rep.layers
    fig, ax, y = _layer_chart(layers)
    tightest = min(rep.fanin_limits.values(), default=None)
    colors = [QUANT_COLOR if tightest is not None and l.max_fanin > tightest else SNN_COLOR for l in layers]
    vals = [l.max_fanin for l in layers]
    ax.barh(y, vals, color=colors, height=0.6, label="largest fan-in of the layer")
    for yi, v in zip(y, vals):
        ax.text(v, yi, f" {v:,}", va="center", fontsize=8)
    for (name, lim), c in zip(rep.fanin_limits.items(), LIMIT_COLORS):
        ax.axvline(lim, color=c, ls="--", lw=1.5, label=f"{name}: {lim:,}")
    if not rep.fanin_limits:
        ax.plot([], [], " ", label=f"no fan-in limit (target {rep.target})")
    ax.set_xscale("log")  # limits are often 10-100x the smallest layer's fan-in
    ax.set_xlim(0.8, max(vals + list(rep.fanin_limits.values()) + [1]) * 3)
    ax.set_xlabel("fan-in (non-zero synapses into one neuron, counted through sum pools; log scale)")
    ax.set_title("Fan-in per layer against the limit")
    _legend_below(ax, ncol=3)
    ax.grid(axis="x", alpha=0.3)
    return fig


def divergence(rep: ReportData) -> Figure:
    """Per layer: correlation of the ANN's activation with the SNN's value, and the RMS
    error relative to the ANN's RMS (where the correlation drops, accuracy is lost)."""
    layers = [l for l in rep.layers if l.correlation is not None or l.relative_rmse is not None]
    fig = _layer_figure(len(layers), width=11)
    ax, ax2 = fig.subplots(1, 2, sharey=True)
    y = _layer_axis(ax, layers)
    r = [l.correlation if l.correlation is not None else np.nan for l in layers]
    e = [l.relative_rmse if l.relative_rmse is not None else np.nan for l in layers]
    ax.barh(y, r, color=SNN_COLOR, height=0.6)
    for yi, v in zip(y, r):
        ax.text(0.02 if np.isnan(v) or v < 0.2 else v - 0.02, yi,
                "n/a" if np.isnan(v) else f"{v:.3f}", va="center", fontsize=8,
                ha="left" if np.isnan(v) or v < 0.2 else "right", color="black" if np.isnan(v) or v < 0.2 else "white")
    ax.set_xlim(min(0.0, float(np.nanmin(r + [0.0]))), 1.0)
    ax.set_xlabel("Pearson correlation r (1 = SNN follows the ANN exactly)")
    ax.set_title("ANN activation vs SNN value: correlation")
    ax.grid(axis="x", alpha=0.3)
    ax2.barh(y, e, color=QUANT_COLOR, height=0.6)
    for yi, v in zip(y, e):
        ax2.text(0 if np.isnan(v) else v, yi, " n/a" if np.isnan(v) else f" {v:.3f}", va="center", fontsize=8)
    ax2.set_xlim(0, max(float(np.nanmax(e + [0.1])) * 1.3, 0.1))
    ax2.set_xlabel("RMS(SNN - ANN) / RMS(ANN) (0 = exact)")
    ax2.set_title("relative error")
    ax2.grid(axis="x", alpha=0.3)
    fig.suptitle(f"Where the SNN departs from the ANN (T = {rep.timesteps}; SNN value = "
                 f"scale x spike count / T)", fontsize=10)
    return fig


# (file name, title, what it shows, function); the report lists them in this order.
FIGURES: list[tuple[str, str, str, Callable[[ReportData], Figure]]] = [
    ("accuracy_vs_timesteps.png", "Accuracy against time steps",
     "The SNN's score for each window T (reference simulator) against the ANN's (dashed), and "
     "the SynOps each T costs against the ANN's MACs.", accuracy_vs_timesteps),
    ("firing_rates.png", "Firing rates",
     "Spikes per neuron per step of each spiking layer at the compiled T: near 0, a layer "
     "carries little information; near 1, it saturates.", firing_rates),
    ("synops_vs_macs.png", "SynOps against ANN MACs",
     "Synaptic events per sample into each layer against the ANN's multiply-accumulates of "
     "the same connections.", synops_vs_macs),
    ("weight_histograms.png", "Weights before and after quantization",
     "Float weights against the real values the integer weights stand for (integer x scale).",
     weight_histograms),
    ("fanin.png", "Fan-in against the limit",
     "The largest number of synapses into one neuron of each layer, against the target's "
     "fan-in limit and the --fanin the build was compiled under.", fanin),
    ("divergence.png", "ANN-vs-SNN divergence per layer",
     "For each layer, how closely the SNN's value (scale x spike count / T) follows the ANN's "
     "activation on the same samples. Accuracy is lost where the correlation drops.", divergence),
]


def save_figures(rep: ReportData, directory) -> list[tuple[str, str, str]]:
    """Draw every figure into ``directory``; returns (file name, title, caption) each."""
    from pathlib import Path

    done = []
    for fname, title, caption, draw in FIGURES:
        fig = draw(rep)
        fig.savefig(Path(directory) / fname)
        done.append((fname, title, caption))
    return done
