"""The compiled output directory: what `convert` writes and `evaluate` reads.

    OUT/ir.json, OUT/ir.npz   the SNN graph (see serialize.py)
    OUT/model.onnx            the source model, self-contained (external data inlined), for
                              the ANN baseline
    OUT/compile.json          options, calibration scales, warnings, versions, target
    OUT/<target>/             what the target's backend plugin wrote (absent for target sim)

The directory is written through a temporary sibling and renamed when complete.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import onnx

from .. import __version__
from ..errors import ArtifactError
from ..fsutil import atomic_directory
from ..ir import Graph
from ..ir.serialize import load_graph, save_graph
from .select import SIM

MODEL_FILE = "model.onnx"
INFO_FILE = "compile.json"


@dataclass(frozen=True)
class BuildTarget:
    """What compile.json records of the target a build was compiled for."""

    name: str                                  # SIM for the reference simulator
    version: str | None = None                 # the backend plugin's version
    options: dict[str, str] = field(default_factory=dict)  # its --target-option values
    limits: dict[str, Any] = field(default_factory=dict)   # its Limits, as a dict


@dataclass
class Artifact:
    """A compiled network and everything needed to evaluate it."""

    graph: Graph
    model_path: Path
    info: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def load_model(self) -> onnx.ModelProto:
        return onnx.load(str(self.model_path))

    @property
    def target(self) -> BuildTarget:
        """The target the build was compiled for (the reference simulator when compile.json
        names none)."""
        name = self.info.get("target", SIM)
        rec = self.info.get("backend") or {}
        if not isinstance(name, str) or not isinstance(rec, dict):
            raise ArtifactError(f"{INFO_FILE} of '{self.path}' records its target in a form this "
                                "version cannot read", "re-run 'snncompile convert'")
        options, limits = rec.get("options") or {}, rec.get("limits") or {}
        if not isinstance(options, dict) or not isinstance(limits, dict):
            raise ArtifactError(f"{INFO_FILE} of '{self.path}': the target's options or limits are "
                                "not a mapping", "re-run 'snncompile convert'")
        return BuildTarget(name=name, version=rec.get("version"), options=dict(options),
                           limits=dict(limits))

    @property
    def constraints(self) -> dict[str, int | None]:
        """The limits it was compiled under: ``bits`` (--bits) and ``fanin`` (--fanin)."""
        c = self.info.get("constraints") or {}
        return {"bits": c.get("bits"), "fanin": c.get("fanin")}


def write_artifact(out: str | os.PathLike, graph: Graph, model: onnx.ModelProto,
                   info: dict[str, Any], force: bool = False,
                   lower: Callable[[Path], Any] | None = None, carry: tuple[str, ...] = ()) -> Path:
    """Write graph, source model and info atomically to ``out``; ``lower``, when given, is
    called with the temporary directory to add a backend's files (an error removes all);
    entries named in ``carry`` (e.g. ``checkpoints``) that exist in an old ``out`` are moved
    into the new one."""
    info = dict(info)
    info.update({"snncompile_version": __version__, "python": platform.python_version(),
                 "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    with atomic_directory(out, force=force) as tmp:
        save_graph(graph, tmp)
        onnx.save_model(model, str(tmp / MODEL_FILE), save_as_external_data=False)
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=1, default=_json_default))
        if lower is not None:
            lower(tmp)
        for name in carry:
            if (Path(out) / name).exists():
                os.replace(Path(out) / name, tmp / name)
    return Path(out)


def read_artifact(out: str | os.PathLike) -> Artifact:
    """Load a directory written by :func:`write_artifact`, checking it is complete."""
    d = Path(out)
    if not d.is_dir():
        raise ArtifactError(f"'{d}' does not exist or is not a directory",
                            "pass the directory written by 'snncompile convert -o DIR'")
    graph = load_graph(d)
    model_path = d / MODEL_FILE
    if not model_path.is_file():
        raise ArtifactError(f"'{d}' has no {MODEL_FILE} (the ANN baseline)", "re-run 'snncompile convert'")
    info: dict[str, Any] = {}
    if (d / INFO_FILE).is_file():
        try:
            info = json.loads((d / INFO_FILE).read_text())
        except json.JSONDecodeError as e:
            raise ArtifactError(f"{d / INFO_FILE} is not valid JSON ({e})") from None
    return Artifact(graph=graph, model_path=model_path, info=info, path=d)


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    raise TypeError(f"not JSON serializable: {type(o)}")
