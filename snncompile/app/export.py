"""`snncompile export OUT --format nir -o FILE`: write a compiled network in an exchange
format, whatever target it was compiled for.

An export is the lowering of a file-writing backend plugin (``nir``: backends/nir) applied
to an existing artifact: the same limit check (every layer the format cannot express is
named, nothing is written) and the same file as ``convert --target nir`` would put in
``OUT/nir/``. The file appears whole or not at all (written beside the target, then renamed).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..targets.artifact import read_artifact
from ..errors import UsageError
from ..fsutil import check_file_target
from ..targets.select import check_fit, lower_into, resolve_target

# format -> (backend plugin, the one file it writes)
FORMATS = {"nir": ("nir", "graph.nir")}


def export_artifact(out: str | os.PathLike, fmt: str, path: str | os.PathLike,
                    force: bool = False) -> dict[str, Any]:
    """Write the network of artifact ``out`` as ``fmt`` to ``path``; returns a summary."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format '{fmt}'", f"use one of {', '.join(FORMATS)}")
    target = Path(path)
    check_file_target(target, force, (out,), "export")
    parent = target.resolve().parent
    art = read_artifact(out)
    name, filename = FORMATS[fmt]
    backend = resolve_target(name)
    check_fit(backend, art.graph)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent))
    try:
        written = lower_into(backend, art.graph, tmp) / filename
        os.replace(written, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"out": str(out), "format": fmt, "path": str(target), "backend": backend.name,
            "backend_version": backend.version, "timesteps": art.graph.timesteps,
            "bytes": target.stat().st_size}
