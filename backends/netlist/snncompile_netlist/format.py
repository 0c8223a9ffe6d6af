"""Writing, reading and validating the netlist files (format described in docs/netlist.md).

``netlist.json`` says everything about the network in words and numbers and names, for
every integer array, its key in ``netlist.npz``. Reading checks the format name and
version, every field, every array's shape and range, and the evaluation order, and raises
ArtifactError naming the file, the entry and what is wrong.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import scipy.sparse as sp

from snncompile.plugin import (ArtifactError, ConvOp, DenseOp, MatrixOp, Op, StructuredNetwork, narrow, op_from,
                               read_json)

FORMAT = "snn-int-if-netlist"
FORMAT_VERSION = 2  # 2: projections of kind conv and dense besides explicit synapses (docs/netlist.md)
PROJECTION_KINDS = ("synapses", "conv", "dense")
JSON_FILE = "netlist.json"
NPZ_FILE = "netlist.npz"
KINDS = ("input", "if", "maxpool", "output")
RESETS = ("subtract", "zero")
SPIKES = ("binary", "signed")  # an IF population's "spikes"; absent: binary
INPUT_MODES = ("once", "every_step")
MAX_BITS = 62  # the runner computes in int64


def _bits_signed(a: np.ndarray) -> int:
    m = int(np.abs(a).max(initial=0))
    return m.bit_length() + 1


def _scale_list(v: Any, shape: tuple[int, ...]) -> list[float]:
    """A node's scale, one value per unit (row-major), from whatever broadcastable form."""
    a = np.asarray(v if v is not None else 1.0, np.float64)
    a = a.ravel() if a.size == 1 else a
    return [float(x) for x in np.broadcast_to(a, shape).ravel()]


def _op_entry(op: Op, key: str, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """A projection's operator as netlist fields, its arrays put in ``arrays`` under ``key.*``."""
    if isinstance(op, ConvOp):
        arrays[f"{key}.kernel"] = narrow(op.kernel)
        return {"kind": "conv", "stride": list(op.stride), "pad": list(op.pad), "dilation": list(op.dilation),
                "groups": op.groups, "in_shape": list(op.in_shape), "out_shape": list(op.out_shape),
                "weight_bits": _bits_signed(op.kernel), "arrays": {"kernel": f"{key}.kernel"}}
    if isinstance(op, DenseOp):
        arrays[f"{key}.weight"] = narrow(op.weight)
        e = {"kind": "dense", "weight_bits": _bits_signed(op.weight), "arrays": {"weight": f"{key}.weight"},
             "pre": _op_entry(op.pre, f"{key}.pre", arrays) if op.pre is not None else None}
        return e
    coo = op.matrix.tocoo()
    order = np.lexsort((coo.row, coo.col))  # grouped by presynaptic unit
    pre, post, w = coo.col[order], coo.row[order], coo.data[order]
    arrays[f"{key}.pre"], arrays[f"{key}.post"], arrays[f"{key}.weight"] = narrow(pre), narrow(post), narrow(w)
    return {"kind": "synapses", "synapses": int(len(w)), "weight_bits": _bits_signed(w),
            "arrays": {"pre": f"{key}.pre", "post": f"{key}.post", "weight": f"{key}.weight"}}


def write_netlist(net: StructuredNetwork, graph, directory: Path) -> None:
    """Write ``netlist.json`` and ``netlist.npz`` for a lowered network into ``directory``."""
    arrays: dict[str, np.ndarray] = {}
    pops = []
    for i, p in enumerate(net.populations):
        e: dict[str, Any] = {"name": p.name, "kind": p.kind, "shape": list(p.shape), "units": p.units}
        if p.kind == "input":
            e.update({"mode": p.input_mode, "bits": p.input_bits})
        if p.kind in ("if", "maxpool", "output"):
            e["compartments"] = p.compartments
            if p.kind == "maxpool":
                e["slots"] = p.slots
            arrays[f"p{i}.bias_every"] = narrow(net.bias_every[p.name])
            arrays[f"p{i}.bias_first"] = narrow(net.bias_first[p.name])
            e["arrays"] = {"bias_every": f"p{i}.bias_every", "bias_first": f"p{i}.bias_first"}
        if p.kind == "if":
            arrays[f"p{i}.threshold"] = narrow(p.threshold)
            arrays[f"p{i}.v_init"] = narrow(p.v_init)
            e["arrays"].update({"threshold": f"p{i}.threshold", "v_init": f"p{i}.v_init"})
            e.update({"reset": p.reset, "spikes": p.spikes, "membrane_bits": p.membrane_bits,
                      "threshold_bits": int(p.threshold.max(initial=1)).bit_length()})
        if p.kind == "output":
            e["node"] = p.node
        pops.append(e)
    projs = []
    for k, pr in enumerate(net.projections):
        e = {"source": pr.source, "target": pr.target}
        e.update(_op_entry(pr.op, f"s{k}", arrays))
        e["synapses"] = pr.synapses  # explicit synapses: the list's length; conv/dense: the synapses they stand for
        projs.append(e)
    inp = graph.input
    outputs = [{"node": p.node, "population": p.name,
                "scale": _scale_list(graph[p.node].out_scale, p.shape) if p.units <= 4096 else None}
               for p in net.populations if p.kind == "output"]
    doc = {
        "format": FORMAT, "version": FORMAT_VERSION,
        "about": "integer non-leaky integrate-and-fire network; semantics in docs/netlist.md of snncompile",
        "timesteps": int(net.timesteps or 1),
        "input": {"population": inp.name, "shape": list(inp.shape), "mode": inp.mode, "bits": inp.bits,
                  "encoding": "x_int = clip(round(x / scale), -(2^(bits-1)-1), 2^(bits-1)-1); mode 'once' "
                              "injects T*x_int at t=0, 'every_step' injects x_int each step",
                  "scale": _scale_list(inp.out_scale, (1,))[0] if np.size(inp.out_scale) == 1 else None},
        "outputs": outputs,
        "output_encoding": "acc = sum over t of the population's input current; real = scale * acc / T",
        "bit_widths": {
            "weight": max((p["weight_bits"] for p in projs), default=0),
            "membrane": max((p.get("membrane_bits", 0) for p in pops), default=0),
            "threshold": max((p.get("threshold_bits", 0) for p in pops), default=0)},
        "populations": pops,
        "projections": projs,
    }
    directory = Path(directory)
    (directory / JSON_FILE).write_text(json.dumps(doc, indent=1))
    np.savez(directory / NPZ_FILE, **{k: np.ascontiguousarray(v) for k, v in arrays.items()})


# --- reading ---------------------------------------------------------------------------------

@dataclass
class Netlist:
    """A validated netlist: the JSON document, its arrays (as stored) and every projection's
    operator (in the order of ``doc["projections"]``)."""

    doc: dict[str, Any]
    arrays: dict[str, np.ndarray]
    path: Path
    ops: list[Op]

    def array(self, entry: dict[str, Any], key: str) -> np.ndarray:
        return self.arrays[entry["arrays"][key]].astype(np.int64)


class _Checker:
    def __init__(self, path: Path):
        self.path = path

    def fail(self, where: str, what: str) -> None:
        raise ArtifactError(f"{self.path}: {where}: {what}",
                            "re-create it with 'snncompile convert --target netlist', or fix the "
                            "entry as docs/netlist.md describes")

    def field(self, d: Any, key: str, typ: type | tuple, where: str) -> Any:
        if not isinstance(d, dict) or key not in d:
            self.fail(where, f"missing field '{key}'")
        v = d[key]
        if typ is int and isinstance(v, bool) or not isinstance(v, typ):
            self.fail(where, f"field '{key}' must be {getattr(typ, '__name__', typ)}, got {v!r}")
        return v


def read_netlist(directory: Path) -> Netlist:
    """Load and validate ``netlist.json`` + ``netlist.npz`` from ``directory``."""
    d = Path(directory)
    jp, npzp = d / JSON_FILE, d / NPZ_FILE
    if not jp.is_file() or not npzp.is_file():
        raise ArtifactError(f"'{d}' holds no netlist ({JSON_FILE} and {NPZ_FILE})",
                            "re-run 'snncompile convert --target netlist'")
    doc = read_json(jp, object, "re-run 'snncompile convert --target netlist'")
    try:
        with np.load(npzp, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise ArtifactError(f"cannot read {npzp} ({e})", "re-run 'snncompile convert --target netlist'") from None
    c = _Checker(jp)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        c.fail("top level", f"'format' must be '{FORMAT}', got {doc.get('format') if isinstance(doc, dict) else doc!r}")
    if doc.get("version") != FORMAT_VERSION:
        c.fail("top level", f"format version {doc.get('version')!r} is not supported (this reader "
                            f"reads version {FORMAT_VERSION})")
    T = c.field(doc, "timesteps", int, "top level")
    if T < 1:
        c.fail("top level", f"timesteps must be >= 1, got {T}")
    _check_populations(c, doc, arrays)
    ops = _check_projections(c, doc, arrays)
    _check_io(c, doc)
    return Netlist(doc, arrays, d, ops)


def _get_array(c: _Checker, e: dict, key: str, arrays: dict, where: str, length: int) -> np.ndarray:
    refs = c.field(e, "arrays", dict, where)
    name = refs.get(key)
    if name not in arrays:
        c.fail(where, f"array '{key}' ({name!r}) is missing from {NPZ_FILE}")
    a = arrays[name]
    if not np.issubdtype(a.dtype, np.integer):
        c.fail(where, f"array '{key}' must hold integers, has dtype {a.dtype}")
    if a.shape != (length,):
        c.fail(where, f"array '{key}' has shape {a.shape}, expected ({length},)")
    return a


def _check_populations(c: _Checker, doc: dict, arrays: dict) -> None:
    pops = c.field(doc, "populations", list, "top level")
    names = set()
    for i, p in enumerate(pops):
        where = f"population {i} ({p.get('name') if isinstance(p, dict) else p!r})"
        name = c.field(p, "name", str, where)
        if name in names:
            c.fail(where, "duplicate population name")
        names.add(name)
        kind = c.field(p, "kind", str, where)
        if kind not in KINDS:
            c.fail(where, f"kind '{kind}' is not one of {', '.join(KINDS)}")
        shape = c.field(p, "shape", list, where)
        units = c.field(p, "units", int, where)
        if any(not isinstance(s, int) or s < 1 for s in shape) or int(np.prod(shape)) != units:
            c.fail(where, f"shape {shape} does not hold {units} units")
        if kind == "input":
            if c.field(p, "mode", str, where) not in INPUT_MODES:
                c.fail(where, f"input mode '{p['mode']}' is not one of {', '.join(INPUT_MODES)}")
            bits = c.field(p, "bits", int, where)
            if not 2 <= bits <= 32:
                c.fail(where, f"input bits {bits} outside 2..32")
            continue
        slots = p.get("slots", 1) if kind == "maxpool" else 1
        if kind == "maxpool" and (not isinstance(slots, int) or slots < 1):
            c.fail(where, f"slots must be a positive integer, got {slots!r}")
        comps = c.field(p, "compartments", int, where)
        if comps != units * slots:
            c.fail(where, f"compartments {comps} != units {units} x slots {slots}")
        for key in ("bias_every", "bias_first"):
            _get_array(c, p, key, arrays, where, comps)
        if kind == "if":
            mbits = c.field(p, "membrane_bits", int, where)
            if not 2 <= mbits <= MAX_BITS:
                c.fail(where, f"membrane_bits {mbits} outside 2..{MAX_BITS}")
            if c.field(p, "reset", str, where) not in RESETS:
                c.fail(where, f"reset '{p['reset']}' is not one of {', '.join(RESETS)}")
            spikes = p.get("spikes", "binary")
            if spikes not in SPIKES:
                c.fail(where, f"spikes '{spikes}' is not one of {', '.join(SPIKES)}")
            if spikes == "signed" and p["reset"] != "subtract":
                c.fail(where, "signed spikes need reset 'subtract'")
            th = _get_array(c, p, "threshold", arrays, where, units)
            if th.size and int(th.min()) < 1:
                c.fail(where, f"thresholds must be >= 1 (found {int(th.min())})")
            tbits = c.field(p, "threshold_bits", int, where)
            if th.size and int(th.max()).bit_length() > tbits:
                c.fail(where, f"threshold {int(th.max())} exceeds the declared threshold_bits {tbits}")
            _get_array(c, p, "v_init", arrays, where, units)
    if not pops or pops[0].get("kind") != "input" or sum(p.get("kind") == "input" for p in pops) != 1:
        c.fail("populations", "the first population, and only it, must be the input")


def _check_projections(c: _Checker, doc: dict, arrays: dict) -> list[Op]:
    """Every projection checked, and its operator (for the runner)."""
    pops = {p["name"]: (i, p) for i, p in enumerate(doc["populations"])}
    ops = []
    for k, pr in enumerate(c.field(doc, "projections", list, "top level")):
        where = f"projection {k} ({pr.get('source') if isinstance(pr, dict) else '?'} -> " \
                f"{pr.get('target') if isinstance(pr, dict) else '?'})"
        src, dst = c.field(pr, "source", str, where), c.field(pr, "target", str, where)
        if src not in pops or dst not in pops:
            c.fail(where, f"unknown population '{src if src not in pops else dst}'")
        (si, sp_), (di, dp) = pops[src], pops[dst]
        if sp_["kind"] == "output" or dp["kind"] == "input":
            c.fail(where, "synapses leave input/if/maxpool populations and enter if/maxpool/output ones")
        if si >= di:
            c.fail(where, "the source must come before the target in 'populations' (evaluation order)")
        n = c.field(pr, "synapses", int, where)
        if n < 0:
            c.fail(where, f"synapses must be >= 0, got {n}")
        op = _check_op(c, pr, arrays, where, sp_, sp_["units"], dp["compartments"])
        ops.append(op)
    return ops


def _check_op(c: _Checker, e: dict, arrays: dict, where: str, source: dict, n_in: int, n_out: int) -> Op:
    """One operator entry (kind synapses, conv or dense) from ``n_in`` units to ``n_out`` rows."""
    kind = c.field(e, "kind", str, where)
    if kind not in PROJECTION_KINDS:
        c.fail(where, f"kind '{kind}' is not one of {', '.join(PROJECTION_KINDS)}")
    wb = c.field(e, "weight_bits", int, where)
    if not 1 <= wb <= MAX_BITS:
        c.fail(where, f"weight_bits {wb} outside 1..{MAX_BITS}")
    top = 2 ** (wb - 1) - 1
    if kind == "synapses":
        n = c.field(e, "synapses", int, where)
        pre = _get_array(c, e, "pre", arrays, where, n)
        post = _get_array(c, e, "post", arrays, where, n)
        w = _get_array(c, e, "weight", arrays, where, n)
        if n and (int(pre.min()) < 0 or int(pre.max()) >= n_in):
            c.fail(where, f"presynaptic index out of range 0..{n_in - 1}")
        if n and (int(post.min()) < 0 or int(post.max()) >= n_out):
            c.fail(where, f"postsynaptic index out of range 0..{n_out - 1}")
        _check_range(c, w, top, wb, where)
        m = sp.csr_matrix((w.astype(np.int64), (post.astype(np.int64), pre.astype(np.int64))), shape=(n_out, n_in))
        m.sum_duplicates()
        return MatrixOp(m)
    key = "kernel" if kind == "conv" else "weight"
    refs = c.field(e, "arrays", dict, where)
    if refs.get(key) not in arrays:
        c.fail(where, f"array '{key}' ({refs.get(key)!r}) is missing from {NPZ_FILE}")
    w = arrays[refs[key]]
    if not np.issubdtype(w.dtype, np.integer):
        c.fail(where, f"array '{key}' must hold integers, has dtype {w.dtype}")
    _check_range(c, w, top, wb, where)
    if kind == "conv":
        c.field(e, "in_shape", list, where)  # the source's units seen as (C, H, W), row-major
        try:
            op = op_from({k: e.get(k) for k in ("stride", "pad", "dilation", "groups", "in_shape", "out_shape")}
                         | {"kind": "conv"}, lambda _k: w)
        except (ValueError, TypeError, KeyError) as err:
            c.fail(where, f"conv: {err}")
    else:
        pre_e = e.get("pre")
        pre = None
        if pre_e is not None:
            if not isinstance(pre_e, dict) or pre_e.get("kind") not in ("synapses", "conv"):
                c.fail(where, "a dense projection's 'pre' must be null or an operator of kind synapses or conv")
            rows = w.shape[1] if w.ndim == 2 else -1
            pre = _check_op(c, pre_e, arrays, f"{where}, pre", source, n_in, rows)
        if w.ndim != 2:
            c.fail(where, f"dense weight must be 2-D, has shape {w.shape}")
        op = DenseOp(w, pre)
    if op.n_in != n_in or op.n_out != n_out:
        c.fail(where, f"{kind} maps {op.n_in} units to {op.n_out}, but the source has {n_in} units and the "
                      f"target {n_out} compartments")
    return op


def _check_range(c: _Checker, w: np.ndarray, top: int, wb: int, where: str) -> None:
    if w.size and int(np.abs(w).max()) > top:
        flat = w.ravel()
        c.fail(where, f"weight {int(flat[np.argmax(np.abs(flat))])} out of range for {wb}-bit weights (+-{top})")


def _check_io(c: _Checker, doc: dict) -> None:
    inp = c.field(doc, "input", dict, "top level")
    first = doc["populations"][0]
    if c.field(inp, "population", str, "input") != first["name"]:
        c.fail("input", f"population '{inp['population']}' is not the input population")
    if c.field(inp, "shape", list, "input") != first["shape"]:
        c.fail("input", f"shape {inp['shape']} differs from the population's {first['shape']}")
    outs = c.field(doc, "outputs", list, "top level")
    kinds = {p["name"]: p["kind"] for p in doc["populations"]}
    if not outs:
        c.fail("outputs", "no outputs")
    for o in outs:
        pop = c.field(o, "population", str, "outputs")
        c.field(o, "node", str, "outputs")
        if kinds.get(pop) != "output":
            c.fail("outputs", f"'{pop}' is not an output population")
