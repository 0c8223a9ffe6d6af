"""The compiled output directory: what `convert` writes and `evaluate` reads.

    OUT/ir.json, OUT/ir.npz   the SNN graph (see serialize.py)
    OUT/model.onnx            the source model, self-contained (external data inlined), for
                              the ANN baseline
    OUT/compile.json          options, calibration scales, warnings, versions, target
    OUT/<target>/             what the target's backend plugin wrote (absent for target sim)

The directory is written through a temporary sibling and renamed when complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import onnx

from .. import __version__
from ..errors import ArtifactError
from ..fsutil import atomic_directory
from ..ir import Graph, IFNode
from ..ir.files import REWRITE, read_json, sha256_file
from ..ir.serialize import load_graph, save_graph
from .select import SIM

MODEL_FILE = "model.onnx"
INFO_FILE = "compile.json"
MODEL_HASH = "model_sha256"  # compile.json: SHA-256 of model.onnx as written
log = logging.getLogger("snncompile")


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
        """The source model (the ANN baseline), checked against the SHA-256 compile.json
        recorded when the artifact was written: a swapped or edited model.onnx is an
        ArtifactError. Artifacts written before the hash was recorded load with a warning.
        External data is never followed (the copy in an artifact is self-contained)."""
        try:
            data = self.model_path.read_bytes()
        except OSError as e:
            raise ArtifactError(f"cannot read {self.model_path}: {e.strerror}", REWRITE) from None
        want = self.info.get(MODEL_HASH)
        if want is None:
            log.warning("%s of '%s' records no %s (an artifact written before it was "
                        "recorded): %s is used unchecked; re-run 'snncompile convert' to record it",
                        INFO_FILE, self.path, MODEL_HASH, MODEL_FILE)
        elif hashlib.sha256(data).hexdigest() != want:
            raise ArtifactError(f"{self.model_path} is not the model this artifact was compiled "
                                f"from (its SHA-256 differs from '{MODEL_HASH}' in {INFO_FILE})",
                                "restore the original model.onnx, or re-run 'snncompile convert'")
        try:
            model = onnx.load_model_from_string(data)
        except Exception as e:  # protobuf's DecodeError and kin: the file's fault
            raise ArtifactError(f"{self.model_path} is not a readable ONNX model "
                                f"({type(e).__name__}: {e})", REWRITE) from None
        self._check_tensor_names(model)
        return model

    def _check_tensor_names(self, model: onnx.ModelProto) -> None:
        """The ONNX tensors ir.json names (the input, the compiled output, each IF layer's
        calibration tensor) exist in the model: the readers run onnxruntime on them."""
        g = model.graph
        produced = {i.name for i in g.input} | {o for n in g.node for o in n.output}
        meta = self.graph.meta
        wanted = {"onnx_input": meta.get("onnx_input"), "onnx_output": meta.get("onnx_output")}
        wanted.update({f"calib_tensor of '{n.name}'": n.calib_tensor for n in self.graph.nodes
                       if isinstance(n, IFNode) and n.calib_tensor})
        for field, name in wanted.items():
            if not isinstance(name, str) or name not in produced:
                raise ArtifactError(f"{self.path / 'ir.json'}: {field} {name!r} is not a tensor of "
                                    f"{MODEL_FILE}", REWRITE)
        if meta["onnx_input"] not in {i.name for i in g.input}:
            raise ArtifactError(f"{self.path / 'ir.json'}: onnx_input {meta['onnx_input']!r} is not "
                                f"an input of {MODEL_FILE}", REWRITE)

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


def is_artifact(path: Path) -> bool:
    """Whether ``path`` is a folder snncompile wrote as a build: an artifact (its IR
    manifest or compile.json), or the checkpoints of a tuning run that has not written one
    yet. Only such a folder is replaced by ``convert --force``."""
    return (Path(path) / "checkpoints").is_dir() or any((Path(path) / f).is_file() for f in ("ir.json", INFO_FILE))


def write_artifact(out: str | os.PathLike, graph: Graph, model: onnx.ModelProto | str | os.PathLike,
                   info: dict[str, Any], force: bool = False,
                   lower: Callable[[Path], Any] | None = None, carry: tuple[str, ...] = (),
                   inputs: tuple[str | None, ...] = (), claimed: bool = False) -> Path:
    """Write graph, source model and info atomically to ``out`` (``model``: the model, or
    the path of a file that holds all its weights, copied from disk as it is: a large model
    then needs no serialized copy in memory, and its caller can drop it before lowering);
    ``lower``, when given, is
    called with the temporary directory to add a backend's files (an error removes all);
    entries named in ``carry`` (e.g. ``checkpoints``) that exist in an old ``out`` are moved
    into the new one. An existing ``out`` is replaced only with ``force``, only when it is
    a build (:func:`is_artifact`) and holds none of ``inputs`` (see
    :func:`..fsutil.check_replaceable`); ``claimed``: the caller holds
    :func:`..fsutil.claim_output` on ``out``."""
    info = dict(info)
    info.update({"snncompile_version": __version__, "python": platform.python_version(),
                 "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    with atomic_directory(out, force=force, is_ours=is_artifact, inputs=inputs, claimed=claimed) as tmp:
        save_graph(graph, tmp)
        if isinstance(model, onnx.ModelProto):
            onnx.save_model(model, str(tmp / MODEL_FILE), save_as_external_data=False)
        else:
            shutil.copyfile(model, tmp / MODEL_FILE)
        info[MODEL_HASH] = sha256_file(tmp / MODEL_FILE)
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
        info = read_json(d / INFO_FILE)
        _check_info(info, d / INFO_FILE)
    if graph.timesteps is None:
        raise ArtifactError(f"{d / 'ir.json'}: 'timesteps' is missing (an artifact holds a "
                            "converted network)", REWRITE)
    return Artifact(graph=graph, model_path=model_path, info=info, path=d)


# compile.json: the fields the readers use, and their JSON types (None: may be null)
_INFO_TYPES: dict[str, tuple[type, ...]] = {
    "target": (str,), "backend": (dict, type(None)), "constraints": (dict, type(None)),
    "options": (dict,), "warnings": (list,), "tuning": (dict,), MODEL_HASH: (str,),
    "source": (str,), "seed": (int,)}


def _check_info(info: dict[str, Any], where: Path) -> None:
    """The fields of compile.json that readers use have the types written; ArtifactError
    naming the field otherwise."""
    def bad(field: str, what: str) -> ArtifactError:
        return ArtifactError(f"{where}: field '{field}' {what}", REWRITE)

    for k, types in _INFO_TYPES.items():
        if k in info and (not isinstance(info[k], types) or isinstance(info[k], bool)):
            raise bad(k, f"must be a {' or '.join('null' if t is type(None) else t.__name__ for t in types)}, "
                         f"got {type(info[k]).__name__}")
    backend = info.get("backend") or {}
    for k in ("options", "limits"):
        if not isinstance(backend.get(k) or {}, dict):
            raise bad(f"backend.{k}", "must be a mapping")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in (backend.get("options") or {}).items()):
        raise bad("backend.options", "must map names to strings")
    if not isinstance(backend.get("version"), (str, type(None))):
        raise bad("backend.version", "must be a string")
    for k, v in (info.get("constraints") or {}).items():
        if v is not None and (type(v) is not int or v < 1):
            raise bad(f"constraints.{k}", f"must be a positive integer or null, got {v!r}")
    if not all(isinstance(w, str) for w in info.get("warnings", [])):
        raise bad("warnings", "must list strings")
    h = info.get(MODEL_HASH)
    if h is not None and (len(h) != 64 or any(c not in "0123456789abcdef" for c in h)):
        raise bad(MODEL_HASH, "is not a SHA-256 in hex")


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    raise TypeError(f"not JSON serializable: {type(o)}")
