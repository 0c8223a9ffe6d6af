"""Save and load graphs without pickle: a JSON manifest plus an .npz of arrays.

The manifest lists every node with its scalar parameters; each array lives in the .npz under
``"<node index>/<field>"`` and is loaded with ``allow_pickle=False``. Loading validates the
format version, node types, parameters (their JSON types), arrays (dtypes, shapes, ranges)
and the graph's structure, and raises one ArtifactError naming the file and field on any
mismatch (the readers of :mod:`.files` underneath).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtifactError, ModelError, UsageError
from . import NODE_TYPES, Graph, IFNode, InputNode, Node, WeightedNode, membrane_overflows
from .files import REWRITE, artifact_file, read_json, read_npz
from .options import ConversionOptions
from .structure import weight_bits

FORMAT = "snncompile-ir"
# 2: weighted nodes may carry weight_exp (Loihi-style weight exponent); version 1 files
# lack it and load with its default, 0.
VERSION = 2
READABLE = (1, 2)
MAX_TIMESTEPS = 1 << 20          # a longer window is no artifact snncompile writes
MAX_DIM = 1 << 31                # elements of one node's output
MEMBRANE_BITS = (2, 62)          # the simulators' int64 arithmetic
INT_ARRAYS = ("weight_int", "bias_int", "threshold", "v_init")
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


def _widen(name: str, a: np.ndarray, where: str) -> np.ndarray:
    """Stored integers back to the working types: int32 weights, int64 everything else
    (refusing values the working type would wrap)."""
    if not np.issubdtype(a.dtype, np.integer):
        return a
    t = np.int32 if name == "weight_int" else np.int64
    if a.size and (int(a.min()) < np.iinfo(t).min or int(a.max()) > np.iinfo(t).max):
        raise ArtifactError(f"{where}: '{name}' holds {int(np.abs(a.astype(np.float64)).max()):.4g}, "
                            f"beyond {np.dtype(t).name}", REWRITE)
    return a.astype(t)


def save_graph(graph: Graph, directory: str | os.PathLike) -> None:
    """Write ``ir.json`` and ``ir.npz`` into an existing directory."""
    d = Path(directory)
    manifest, arrays = graph_to_manifest(graph)
    (d / MANIFEST).write_text(json.dumps(manifest, indent=1))
    np.savez(d / ARRAYS, **arrays)  # uncompressed: compressing large float weights costs seconds


def load_graph(directory: str | os.PathLike) -> Graph:
    """Read and validate a graph written by :func:`save_graph`: every field's type, every
    array's dtype, shape and range (:func:`_check_values`); ArtifactError naming the file
    and the field on any mismatch."""
    d = Path(directory)
    mpath, apath = d / MANIFEST, d / ARRAYS
    if not mpath.is_file() or not apath.is_file():
        raise ArtifactError(f"'{d}' is not a compiled snncompile output (no {MANIFEST}/{ARRAYS})",
                            "pass the directory written by 'snncompile convert -o DIR'")
    manifest = read_json(mpath)
    if manifest.get("format") != FORMAT:
        raise ArtifactError(f"{mpath} is not an snncompile IR manifest", REWRITE)
    if manifest.get("version") not in READABLE:
        raise ArtifactError(f"{mpath} has IR version {manifest.get('version')!r}, this snncompile "
                            f"reads versions {', '.join(map(str, READABLE))}",
                            "re-run 'snncompile convert' with this version")
    arrays = read_npz(apath)
    with artifact_file(mpath):
        entries = _typed(manifest, "nodes", list, mpath)
        nodes = [_node_from_entry(i, entry, arrays, mpath) for i, entry in enumerate(entries)]
        outputs = _typed(manifest, "outputs", list, mpath)
        if not all(isinstance(o, str) for o in outputs):
            raise ArtifactError(f"{mpath}: 'outputs' must list node names", REWRITE)
        T = manifest.get("timesteps")
        if T is not None and (type(T) is not int or not 1 <= T <= MAX_TIMESTEPS):
            raise ArtifactError(f"{mpath}: 'timesteps' must be an integer in 1..{MAX_TIMESTEPS}, "
                                f"got {T!r}", REWRITE)
        meta = dict(manifest.get("meta", {}))
        graph = Graph(nodes, list(outputs), T, meta,
                      _conversion(manifest.get("conversion", meta.pop("conversion", None)), mpath))
        try:
            graph.validate()
        except ModelError as e:
            raise ArtifactError(f"{mpath}: {e.message}", REWRITE) from None
        _check_values(graph, mpath)
    return graph


def _typed(d: dict, key: str, typ: type, where: Path) -> Any:
    if key not in d:
        raise ArtifactError(f"{where}: field '{key}' is missing", REWRITE)
    if not isinstance(d[key], typ) or isinstance(d[key], bool):
        raise ArtifactError(f"{where}: field '{key}' must be a {_JSON_NAMES.get(typ, typ.__name__)}, "
                            f"got {type(d[key]).__name__}", REWRITE)
    return d[key]


_JSON_NAMES = {list: "list", dict: "mapping", str: "string", int: "integer"}


def _param_ok(default: Any, value: Any) -> bool:
    """Whether a manifest value has the type of the node field whose default is ``default``."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return type(value) is int
    if isinstance(default, float) or default is None:
        return (value is None and default is None) or (number and bool(np.isfinite(value)))
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, tuple):
        return isinstance(value, list) and all(type(v) is int for v in value)
    return True


def _node_from_entry(i: int, entry: Any, arrays: dict[str, np.ndarray], where: Path) -> Node:
    if not isinstance(entry, dict):
        raise ArtifactError(f"{where}: node {i} is a {type(entry).__name__}, not a mapping", REWRITE)
    op = entry.get("op")
    if not isinstance(op, str) or op not in NODE_TYPES:
        raise ArtifactError(f"{where}: node {i} has unknown op {op!r}", REWRITE)
    cls = NODE_TYPES[op]
    name = _typed(entry, "name", str, where)
    at = f"{where}: node {i} ('{name}')"
    fields = {f.name: f for f in dataclasses.fields(cls)}
    inputs = entry.get("inputs", [])
    shape = entry.get("shape", [])
    if not isinstance(inputs, list) or not all(isinstance(x, str) for x in inputs):
        raise ArtifactError(f"{at}: 'inputs' must list node names", REWRITE)
    if (not isinstance(shape, list) or not all(type(x) is int and 1 <= x <= MAX_DIM for x in shape)
            or np.prod(shape, dtype=np.float64) > MAX_DIM):
        raise ArtifactError(f"{at}: 'shape' must list positive integers (at most {MAX_DIM} "
                            f"elements in all), got {shape!r}", REWRITE)
    kw: dict[str, Any] = {"name": name, "inputs": list(inputs), "shape": tuple(shape)}
    for key, value in entry.items():
        if key in ("op", "arrays", "name", "inputs", "shape"):
            continue
        if key not in fields:
            raise ArtifactError(f"{at} has unknown field '{key}'", REWRITE)
        if fields[key].metadata.get("array"):
            raise ArtifactError(f"{at}: '{key}' is an array, stored in {ARRAYS}, not a value in "
                                f"{where.name}", REWRITE)
        if not _param_ok(fields[key].default, value):
            raise ArtifactError(f"{at}: field '{key}' has the wrong type ({value!r}, expected "
                                f"{type(fields[key].default).__name__})", REWRITE)
        kw[key] = tuple(value) if isinstance(value, list) else value
    stored = entry.get("arrays", [])
    if not isinstance(stored, list) or not all(isinstance(a, str) for a in stored):
        raise ArtifactError(f"{at}: 'arrays' must list field names", REWRITE)
    for a in stored:
        key = f"{i}/{a}"
        if a not in fields or not fields[a].metadata.get("array"):
            raise ArtifactError(f"{at}: '{a}' is not an array field of a {op} node", REWRITE)
        if key not in arrays:
            raise ArtifactError(f"{where.parent / ARRAYS}: array '{key}' ({a} of node '{name}') is "
                                "missing", REWRITE)
        kw[a] = _widen(a, arrays[key], f"{where.parent / ARRAYS}: array '{key}'")
    missing = [f.name for f in fields.values() if f.init and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING and f.name not in kw]
    if missing:
        raise ArtifactError(f"{at}: required field '{missing[0]}' is missing", REWRITE)
    return cls(**kw)


def _check_values(graph: Graph, where: Path) -> None:
    """Every array of a loaded graph against its node: integer fields hold integers, float
    fields finite numbers, shapes fit the node, integer weights fit the recorded width,
    thresholds and initial membranes the membrane width."""
    npz = where.parent / ARRAYS
    bits = graph.conversion.weight_bits if graph.conversion is not None else None
    for n in graph.nodes:
        at = f"node '{n.name}'"
        for a in n.array_names():
            v = getattr(n, a)
            if v is None:
                continue
            if a in INT_ARRAYS and not np.issubdtype(v.dtype, np.integer):
                raise ArtifactError(f"{npz}: '{a}' of {at} must hold integers, has dtype {v.dtype}", REWRITE)
            if v.dtype.kind == "f" and not np.all(np.isfinite(v)):
                raise ArtifactError(f"{npz}: '{a}' of {at} holds NaN or infinity", REWRITE)
        if isinstance(n, InputNode) and not 1 <= n.bits <= 32:
            raise ArtifactError(f"{where}: input '{n.name}' has bits {n.bits}, expected 1..32", REWRITE)
        if isinstance(n, WeightedNode):
            if n.weight_int is not None:
                if n.weight_int.shape != n.weight.shape:
                    raise ArtifactError(f"{npz}: 'weight_int' of {at} has shape {n.weight_int.shape}, "
                                        f"its 'weight' {n.weight.shape}", REWRITE)
                if bits is not None and weight_bits(n) > bits:
                    raise ArtifactError(f"{npz}: 'weight_int' of {at} needs {weight_bits(n)} bits, "
                                        f"the artifact records --bits {bits}", REWRITE)
            if not 0 <= n.weight_exp <= 24:
                raise ArtifactError(f"{where}: 'weight_exp' of {at} is {n.weight_exp}, expected 0..24",
                                    REWRITE)
            if n.bias_int is not None and n.bias_int.size and int(np.abs(n.bias_int).max()) >= 2 ** 62:
                raise ArtifactError(f"{npz}: 'bias_int' of {at} is beyond 62 bits", REWRITE)
        if isinstance(n, IFNode):
            if not MEMBRANE_BITS[0] <= n.membrane_bits <= MEMBRANE_BITS[1]:
                raise ArtifactError(f"{where}: 'membrane_bits' of {at} is {n.membrane_bits}, expected "
                                    f"{MEMBRANE_BITS[0]}..{MEMBRANE_BITS[1]}", REWRITE)
            for a in ("threshold", "v_init"):
                v = getattr(n, a)
                if v is not None and np.broadcast_shapes(v.shape, n.shape) != tuple(n.shape):
                    raise ArtifactError(f"{npz}: '{a}' of {at} has shape {v.shape}, which does not "
                                        f"fit the layer's {tuple(n.shape)}", REWRITE)
            if over := membrane_overflows(n):
                a, reach, top = over[0]
                raise ArtifactError(f"{npz}: '{a}' of {at} reaches {reach}, beyond "
                                    f"its {n.membrane_bits}-bit membrane (max {top})", REWRITE)
        if n.out_scale is not None:
            try:
                np.broadcast_shapes(n.out_scale.shape, n.shape)
            except ValueError:
                raise ArtifactError(f"{npz}: 'out_scale' of {at} has shape {n.out_scale.shape}, which "
                                    f"does not fit the node's {tuple(n.shape)}", REWRITE) from None


def _conversion(entry: Any, mpath: Path) -> ConversionOptions | None:
    """The conversion options a manifest records (older manifests kept them, with extra
    keys, in ``meta``; options they predate take their defaults)."""
    if entry is None:
        return None
    if not isinstance(entry, dict):
        raise ArtifactError(f"{mpath}: the conversion options are not a mapping", "re-run 'snncompile convert'")
    names = {f.name: f.default for f in dataclasses.fields(ConversionOptions)}
    for k, v in entry.items():
        if k in names and not _param_ok(names[k], v):
            raise ArtifactError(f"{mpath}: conversion option '{k}' has the wrong type ({v!r})", REWRITE)
    opts = ConversionOptions(**{k: v for k, v in entry.items() if k in names})
    try:
        opts.check()
    except UsageError as e:
        raise ArtifactError(f"{mpath}: conversion options: {e.message}", REWRITE) from None
    return opts
