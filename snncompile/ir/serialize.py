"""Save and load graphs without pickle: a JSON manifest plus an .npz of arrays.

The manifest lists every node with its scalar parameters; each array lives in the .npz under
``"<node index>/<field>"`` and is loaded with ``allow_pickle=False``. Loading validates the
format version, node types, parameters and shapes, and raises ArtifactError on any mismatch.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtifactError, ModelError
from . import NODE_TYPES, Graph, Node
from .options import ConversionOptions

FORMAT = "snncompile-ir"
# 2: weighted nodes may carry weight_exp (Loihi-style weight exponent); version 1 files
# lack it and load with its default, 0.
VERSION = 2
READABLE = (1, 2)
MANIFEST = "ir.json"
ARRAYS = "ir.npz"


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    return v


def graph_to_manifest(graph: Graph) -> tuple[dict, dict[str, np.ndarray]]:
    """The JSON-able manifest and the named arrays of a graph."""
    nodes, arrays = [], {}
    for i, n in enumerate(graph.nodes):
        entry: dict[str, Any] = {"name": n.name, "op": n.op, "inputs": list(n.inputs),
                                 "shape": list(n.shape)}
        for p in n.param_names():
            entry[p] = _jsonable(getattr(n, p))
        stored = []
        for a in n.array_names():
            value = getattr(n, a)
            if value is not None:
                arrays[f"{i}/{a}"] = _compact_ints(np.asarray(value))
                stored.append(a)
        entry["arrays"] = stored
        nodes.append(entry)
    manifest = {"format": FORMAT, "version": VERSION, "timesteps": graph.timesteps,
                "outputs": list(graph.outputs), "meta": graph.meta, "nodes": nodes}
    if graph.conversion is not None:
        manifest["conversion"] = dataclasses.asdict(graph.conversion)
    return manifest, arrays


def _compact_ints(a: np.ndarray) -> np.ndarray:
    """Integer arrays in the narrowest signed type that holds them (int weights are mostly
    8 or 16 bits); loading widens them again (see ``_widen``)."""
    if not np.issubdtype(a.dtype, np.integer) or a.size == 0:
        return a
    lo, hi = int(a.min()), int(a.max())
    for t in (np.int8, np.int16, np.int32):
        if np.iinfo(t).min <= lo and hi <= np.iinfo(t).max:
            return a.astype(t)
    return a.astype(np.int64)


def _widen(name: str, a: np.ndarray) -> np.ndarray:
    """Stored integers back to the working types: int32 weights, int64 everything else."""
    if not np.issubdtype(a.dtype, np.integer):
        return a
    return a.astype(np.int32 if name == "weight_int" else np.int64)


def save_graph(graph: Graph, directory: str | os.PathLike) -> None:
    """Write ``ir.json`` and ``ir.npz`` into an existing directory."""
    d = Path(directory)
    manifest, arrays = graph_to_manifest(graph)
    (d / MANIFEST).write_text(json.dumps(manifest, indent=1))
    np.savez(d / ARRAYS, **arrays)  # uncompressed: compressing large float weights costs seconds


def load_graph(directory: str | os.PathLike) -> Graph:
    """Read and validate a graph written by :func:`save_graph`."""
    d = Path(directory)
    mpath, apath = d / MANIFEST, d / ARRAYS
    if not mpath.is_file() or not apath.is_file():
        raise ArtifactError(f"'{d}' is not a compiled snncompile output (no {MANIFEST}/{ARRAYS})",
                            "pass the directory written by 'snncompile convert -o DIR'")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{mpath} is not valid JSON ({e})", "re-run 'snncompile convert'") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{mpath} is not an snncompile IR manifest")
    if manifest.get("version") not in READABLE:
        raise ArtifactError(f"{mpath} has IR version {manifest.get('version')}, this snncompile "
                            f"reads versions {', '.join(map(str, READABLE))}",
                            "re-run 'snncompile convert' with this version")
    try:
        with np.load(apath, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as e:
        raise ArtifactError(f"cannot read {apath} ({e})", "re-run 'snncompile convert'") from None
    nodes = []
    for i, entry in enumerate(manifest.get("nodes", [])):
        nodes.append(_node_from_entry(i, entry, arrays, mpath))
    meta = dict(manifest.get("meta", {}))
    graph = Graph(nodes, list(manifest.get("outputs", [])), manifest.get("timesteps"), meta,
                  _conversion(manifest.get("conversion", meta.pop("conversion", None)), mpath))
    try:
        graph.validate()
    except ModelError as e:
        raise ArtifactError(f"{mpath}: {e.message}", "re-run 'snncompile convert'") from None
    return graph


def _node_from_entry(i: int, entry: dict, arrays: dict[str, np.ndarray], where: Path) -> Node:
    try:
        cls = NODE_TYPES[entry["op"]]
    except (KeyError, TypeError):
        raise ArtifactError(f"{where}: node {i} has unknown op {entry.get('op')!r}") from None
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kw: dict[str, Any] = {}
    for key, value in entry.items():
        if key in ("op", "arrays"):
            continue
        if key not in fields:
            raise ArtifactError(f"{where}: node {i} ({entry.get('name')}) has unknown field '{key}'")
        kw[key] = tuple(value) if isinstance(value, list) and key != "inputs" else value
    for a in entry.get("arrays", []):
        key = f"{i}/{a}"
        if key not in arrays or a not in fields:
            raise ArtifactError(f"{where}: array '{a}' of node '{entry.get('name')}' is missing")
        kw[a] = _widen(a, arrays[key])
    try:
        return cls(**kw)
    except TypeError as e:
        raise ArtifactError(f"{where}: node {i} ({entry.get('name')}) is malformed: {e}") from None


def _conversion(entry: Any, mpath: Path) -> ConversionOptions | None:
    """The conversion options a manifest records (older manifests kept them, with extra
    keys, in ``meta``; options they predate take their defaults)."""
    if entry is None:
        return None
    if not isinstance(entry, dict):
        raise ArtifactError(f"{mpath}: the conversion options are not a mapping", "re-run 'snncompile convert'")
    names = {f.name for f in dataclasses.fields(ConversionOptions)}
    try:
        return ConversionOptions(**{k: v for k, v in entry.items() if k in names})
    except TypeError as e:
        raise ArtifactError(f"{mpath}: unreadable conversion options ({e})", "re-run 'snncompile convert'") from None
