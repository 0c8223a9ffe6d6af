"""`snncompile report`: a compiled build measured on data, as plots and tables.

    REPORT_DIR/report.md      summary, tables, and the figures as image links
    REPORT_DIR/report.html    the same with the figures embedded (one self-contained file)
    REPORT_DIR/report.json    every number shown
    REPORT_DIR/*.png          accuracy vs T, firing rates, SynOps vs MACs, weight
                              histograms, fan-in vs limit, ANN-vs-SNN divergence per layer

Everything is measured first, then written into a temporary sibling directory renamed when
complete, so a failure (bad data, a directory that is not a build) leaves nothing behind.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ...fsutil import atomic_directory, check_replaceable, claim_output
from .measure import DEFAULT_SWEEP, ReportData, measure_report

__all__ = ["write_report", "measure_report", "ReportData", "DEFAULT_SWEEP"]


def is_report(path: Path) -> bool:
    """Whether ``path`` is a report folder snncompile wrote (the only kind ``--force``
    replaces)."""
    return (Path(path) / "report.json").is_file() and (Path(path) / "report.md").is_file()


def write_report(out: str, data: str, report_dir: str, timesteps: list[int] | None = None,
                 force: bool = False, batch_size: int = 256, progress: bool = False) -> dict[str, Any]:
    """Measure the build ``out`` on ``data`` and write the report into ``report_dir``;
    returns the report's JSON summary plus ``files`` (the names written). ``progress``:
    bars on stderr for the simulations."""
    from .plots import save_figures
    from .render import html_page, markdown

    # Claimed, and checked for what would stop the writing, before the (slow) measuring.
    inputs = (out, data)
    with claim_output(report_dir):
        check_replaceable(report_dir, force, is_report, inputs)
        rep = measure_report(out, data, timesteps, batch_size, progress=progress)
        summary = rep.as_json()
        with atomic_directory(report_dir, force=force, is_ours=is_report, inputs=inputs,
                              claimed=True) as tmp:
            figures = save_figures(rep, tmp)
            (tmp / "report.md").write_text(markdown(rep, figures))
            (tmp / "report.html").write_text(html_page(rep, figures, Path(tmp)))
            (tmp / "report.json").write_text(json.dumps(summary, indent=1) + "\n")
    summary["files"] = sorted(["report.md", "report.html", "report.json"] + [f for f, _, _ in figures])
    return summary
