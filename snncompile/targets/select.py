"""Compile targets: the built-in reference simulator (``sim``) or a backend plugin.

`convert --target NAME` resolves the backend before any work is done (an unknown or broken
one fails fast), checks the converted graph against the backend's limits (every violation
at once, nothing written), and lowers it into ``OUT/<target>/`` inside the same atomic
output directory, so a failed lowering leaves nothing behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ..ir import Graph
from .api import (Backend, BackendError, LimitError, available_backends, get_backend,
                  unknown_target)
from ..errors import SnnCompileError, UsageError

SIM = "sim"


def resolve_target(name: str, options: Mapping[str, str] | None = None) -> Backend | None:
    """The backend for ``name``, or None for the built-in reference simulator."""
    if name == SIM:
        if options:
            raise UsageError("target 'sim' (the reference simulator) takes no --target-option",
                             "drop --target-option, or choose a backend with --target")
        return None
    if name not in available_backends():
        raise unknown_target(name, [SIM] + list(available_backends()))
    return get_backend(name, options)


def check_fit(backend: Backend, graph: Graph) -> None:
    """Raise LimitError listing every violation of the backend's limits."""
    violations = backend.check(graph)
    if violations:
        raise LimitError(backend.name, violations)


def lower_into(backend: Backend, graph: Graph, out_dir: Path) -> Path:
    """Lower ``graph`` into ``out_dir/<backend name>/``; a plugin's own bug becomes a
    BackendError naming the plugin (our errors pass through unchanged)."""
    d = Path(out_dir) / backend.name
    d.mkdir()
    try:
        backend.lower(graph, d)
    except SnnCompileError:
        raise
    except Exception as e:  # a plugin bug: say whose, not a traceback
        raise BackendError(f"backend '{backend.name}' {backend.version} failed while lowering: "
                           f"{type(e).__name__}: {e}",
                           "report this to the backend's authors; '--target sim' still works") from e
    return d


def target_info(backend: Backend | None, name: str) -> dict[str, Any]:
    """What compile.json records about the target."""
    if backend is None:
        return {"name": name, "version": None, "options": {}}
    return {"name": backend.name, "version": backend.version, "options": dict(backend.options),
            "limits": backend.limits().as_dict()}
