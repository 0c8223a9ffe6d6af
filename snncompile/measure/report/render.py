"""The report as documents: Markdown beside its PNGs (``report.md``) and one self-contained
HTML file with the PNGs embedded (``report.html``), from the same sections and tables."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from .measure import ReportData


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def summary_lines(rep: ReportData) -> list[str]:
    """The headline figures, at the compiled T (the same numbers `evaluate --json` prints)."""
    ev = rep.evaluation
    lines = [f"build: `{rep.artifact}` (target {rep.target}, T = {rep.timesteps})",
             f"data: `{rep.data}` ({rep.samples} samples, {rep.task})"]
    if rep.task == "classification":
        lines.append(f"accuracy: ANN {ev['ann_accuracy']:.4f}, SNN {ev['snn_accuracy']:.4f} "
                     f"(agreement {ev['agreement']:.4f})")
    else:
        lines.append(f"MSE: ANN {ev['ann_mse']:.5g}, SNN {ev['snn_mse']:.5g}; PSNR (dB): ANN "
                     f"{ev['ann_psnr']:.2f}, SNN {ev['snn_psnr']:.2f}")
    lines.append(f"SynOps per sample: {ev['synops_per_sample']:,.0f}; ANN MACs per sample: "
                 f"{ev['ann_macs_per_sample']:,}; SynOps per MAC: {_fmt(ev['synops_per_mac'], 3)}")
    lines.append(f"max weight bits: {ev['max_weight_bits']}; max fan-in: {ev['max_fanin']}"
                 + "".join(f"; {k}: {v}" for k, v in rep.fanin_limits.items()))
    if "cores" in ev:
        lines.append(f"{rep.target}: {ev['cores']} cores" +
                     (f" on {ev['chips']} chip{'s' if ev['chips'] != 1 else ''}" if "chips" in ev else ""))
    return lines


def sweep_table(rep: ReportData) -> tuple[list[str], list[list[str]]]:
    metric = "accuracy" if rep.task == "classification" else "mse"
    head = ["T", f"ANN {metric}", f"SNN {metric}", "SynOps/sample", "SynOps/MAC"]
    rows = [[str(r["timesteps"]), _fmt(r.get(f"ann_{metric}")), _fmt(r.get(f"snn_{metric}")),
             f"{r['synops_per_sample']:,.0f}", _fmt(r.get("synops_per_mac"), 3)] for r in rep.sweep]
    if rep.task == "regression":  # the plot shows PSNR: so does the table
        head[3:3] = ["ANN PSNR (dB)", "SNN PSNR (dB)"]
        for row, r in zip(rows, rep.sweep):
            row[3:3] = [_fmt(r.get("ann_psnr"), 2), _fmt(r.get("snn_psnr"), 2)]
    return head, rows


def layer_table(rep: ReportData) -> tuple[list[str], list[list[str]]]:
    head = ["layer", "kind", "neurons", "max fan-in", "w bits", "firing rate", "SynOps/sample",
            "ANN MACs/sample", "correlation r", "rel. RMSE"]
    rows = [[l.name, l.kind, _fmt(l.neurons), _fmt(l.max_fanin), str(l.weight_bits), _fmt(l.firing_rate),
             f"{l.synops_per_sample:,.0f}", _fmt(l.macs_per_sample), _fmt(l.correlation, 3),
             _fmt(l.relative_rmse, 3)] for l in rep.layers]
    for k in ("cores", "chips"):  # what the target spends per layer, where it says
        if any(getattr(l, k) is not None for l in rep.layers):
            head.append(f"{rep.target} {k}")
            for row, l in zip(rows, rep.layers):
                row.append(_fmt(getattr(l, k)))
    return head, rows


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    esc = [[c.replace("|", "\\|") for c in r] for r in [head] + rows]
    lines = ["| " + " | ".join(esc[0]) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in esc[1:]]
    return "\n".join(lines)


def _html_table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def markdown(rep: ReportData, figures: list[tuple[str, str, str]]) -> str:
    """report.md: the summary, the tables, and each figure as a relative image link."""
    parts = ["# snncompile report", ""] + [f"- {l}" for l in summary_lines(rep)]
    parts += ["", "## Accuracy and SynOps against time steps", "", _md_table(*sweep_table(rep)),
              "", f"## Layers (T = {rep.timesteps})", "", _md_table(*layer_table(rep)), ""]
    for fname, title, caption in figures:
        parts += [f"## {title}", "", caption, "", f"![{title}]({fname})", ""]
    return "\n".join(parts)


CSS = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
       "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #bbb;padding:3px 8px;"
       "text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:100%}"
       "code{background:#f3f3f3}")


def html_page(rep: ReportData, figures: list[tuple[str, str, str]], directory: Path) -> str:
    """report.html: the same content, with every PNG embedded (one file to pass around)."""
    def inline(text: str) -> str:  # `code` spans of the summary lines
        bits = html.escape(text).split("`")
        return "".join(f"<code>{b}</code>" if i % 2 else b for i, b in enumerate(bits))

    parts = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'><title>snncompile report</title>",
             f"<style>{CSS}</style></head><body>", "<h1>snncompile report</h1>", "<ul>"]
    parts += [f"<li>{inline(l)}</li>" for l in summary_lines(rep)]
    parts += ["</ul>", "<h2>Accuracy and SynOps against time steps</h2>", _html_table(*sweep_table(rep)),
              f"<h2>Layers (T = {rep.timesteps})</h2>", _html_table(*layer_table(rep))]
    for fname, title, caption in figures:
        data = base64.b64encode((directory / fname).read_bytes()).decode("ascii")
        parts += [f"<h2>{html.escape(title)}</h2>", f"<p>{html.escape(caption)}</p>",
                  f"<img alt='{html.escape(title)}' data-file='{fname}' src='data:image/png;base64,{data}'>"]
    parts += ["</body></html>", ""]
    return "\n".join(parts)
