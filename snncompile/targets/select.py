"""Compile targets: the built-in reference simulator (``sim``) or a backend plugin.

`convert --target NAME` resolves the backend before any work is done (an unknown or broken
one fails fast), checks the converted graph against the backend's limits (every violation
at once, nothing written), and lowers it into ``OUT/<target>/`` inside the same atomic
output directory, so a failed lowering leaves nothing behind.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any, Mapping

from ..ir import Graph
from .api import (RULES, Backend, BackendError, LimitError, Limits, available_backends, get_backend,
                  unknown_target)
from .profile import ProfileChoice
from ..errors import SnnCompileError, UsageError
from ..progress import progress_bar

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


def fit_violations(backend: Backend | None, graph: Graph) -> list[Violation]:
    """Every way ``graph`` does not fit ``backend`` (``None``: the reference simulator): the
    graph's own rule that each threshold fits its membrane, then the backend's checks."""
    limits = backend.limits() if backend is not None else Limits()
    violations = RULES["membrane_range"](graph, limits)
    if backend is not None:
        violations += [v for v in backend.check(graph) if v not in violations]
    return violations


def check_fit(backend: Backend | None, graph: Graph, choice: ProfileChoice | None = None) -> None:
    """Raise LimitError listing every violation of the backend's limits (and, where a
    profile chose options, what it chose). Every target, the reference simulator (``backend``
    None) included, also gets the graph's own rule that each threshold fits its membrane
    (``RULES["membrane_range"]``), so no target writes what loading would refuse."""
    violations = fit_violations(backend, graph)
    if violations:
        err = LimitError(backend.name if backend is not None else SIM, violations)
        if choice is not None and (choice.chosen or choice.kept or choice.note):
            err.message += f"\n({choice.line()})"
        raise err


def default_out(model: str, target: str) -> str:
    """The output directory when -o is not given: beside the model, named after it and the
    target (``model.onnx`` -> ``model.loihi``; ``model.snn`` for the reference simulator)."""
    p = Path(model)
    return str(p.with_name(f"{p.stem}.{'snn' if target == SIM else target}"))


def lower_into(backend: Backend, graph: Graph, out_dir: Path, progress: bool = False) -> Path:
    """Lower ``graph`` into ``out_dir/<backend name>/``; a plugin's own bug becomes a
    BackendError naming the plugin (our errors pass through unchanged). ``progress``: a bar
    on stderr, advanced by the backend where its ``lower`` takes a ``progress`` callback."""
    d = Path(out_dir) / backend.name
    d.mkdir()
    reports = "progress" in inspect.signature(backend.lower).parameters
    bar = progress_bar(progress and reports, None, f"lowering for {backend.name}", "layer")
    kwargs: dict[str, Any] = {}
    if reports:
        def advance(done: int, total: int, what: str = "") -> None:
            bar.total = total
            bar.set_postfix_str(what[-30:], refresh=False)
            bar.update(done - bar.n)
        kwargs["progress"] = advance
    elif progress:
        bar.write(f"lowering for {backend.name} (this backend reports no progress)", file=sys.stderr)
    try:
        backend.lower(graph, d, **kwargs)
    except SnnCompileError:
        raise
    except Exception as e:  # a plugin bug: say whose, not a traceback
        raise BackendError(f"backend '{backend.name}' {backend.version} failed while lowering: "
                           f"{type(e).__name__}: {e}",
                           "report this to the backend's authors; '--target sim' still works") from e
    finally:
        bar.close()
    return d


def target_info(backend: Backend | None, name: str) -> dict[str, Any]:
    """What compile.json records about the target."""
    if backend is None:
        return {"name": name, "version": None, "options": {}}
    return {"name": backend.name, "version": backend.version, "options": dict(backend.options),
            "limits": backend.limits().as_dict()}
