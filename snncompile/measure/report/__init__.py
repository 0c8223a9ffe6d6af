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
import os
from pathlib import Path
from typing import Any

from ...errors import UsageError
from ...fsutil import atomic_directory
from .measure import DEFAULT_SWEEP, ReportData, measure_report

__all__ = ["write_report", "measure_report", "ReportData", "DEFAULT_SWEEP"]


def write_report(out: str, data: str, report_dir: str, timesteps: list[int] | None = None,
                 force: bool = False, batch_size: int = 256, progress: bool = False) -> dict[str, Any]:
    """Measure the build ``out`` on ``data`` and write the report into ``report_dir``;
    returns the report's JSON summary plus ``files`` (the names written). ``progress``:
    bars on stderr for the simulations."""
    from .plots import save_figures
    from .render import html_page, markdown

    # Fail before the (slow) measuring on what would stop the writing.
    if os.path.exists(report_dir) and not force:
        raise UsageError(f"report directory '{report_dir}' already exists",
                         "choose another -o, or pass --force to replace it")
    if not Path(report_dir).resolve().parent.is_dir():
        raise UsageError(f"cannot write '{report_dir}': folder '{Path(report_dir).resolve().parent}' "
                         "does not exist", "create it first, or choose another -o")
    rep = measure_report(out, data, timesteps, batch_size, progress=progress)
    summary = rep.as_json()
    with atomic_directory(report_dir, force=force) as tmp:
        figures = save_figures(rep, tmp)
        (tmp / "report.md").write_text(markdown(rep, figures))
        (tmp / "report.html").write_text(html_page(rep, figures, Path(tmp)))
        (tmp / "report.json").write_text(json.dumps(summary, indent=1) + "\n")
    summary["files"] = sorted(["report.md", "report.html", "report.json"] + [f for f, _, _ in figures])
    return summary
