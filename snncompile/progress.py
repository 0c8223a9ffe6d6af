"""Progress bars: one look for every long step (calibration, simulation, running a backend,
lowering), on stderr, drawn only when the caller asks (the CLI does when stderr is a
terminal and --quiet is not given; --json turns them off too)."""

from __future__ import annotations

import sys
from typing import Any


def progress_bar(enabled: bool, total: int | None, desc: str, unit: str = "it") -> Any:
    """A tqdm bar on stderr that disappears when done; a silent one (same methods, no
    output) when not ``enabled``."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False, file=sys.stderr,
                disable=not enabled, dynamic_ncols=True)
