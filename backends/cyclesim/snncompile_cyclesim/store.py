"""The cyclesim artifact: ``arch.json`` (the architecture), ``mapping.json`` (the cores),
``network.json`` + ``network.npz`` (populations and projections: convolutions as their
kernels, dense layers as their weight matrices, anything else as a CSR matrix; see
:mod:`snncompile.targets.structured`), so the files grow with the network's parameters."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from snncompile.plugin import ArtifactError, Op, StructuredNetwork, narrow, op_from, read_json, read_npz

from .arch import Architecture
from .mapping import Core

LAYOUT_VERSION = 2  # 2: structured projections (1: one CSR matrix per projection)


def save(directory: Path, net: StructuredNetwork, arch: Architecture, cores: list[Core]) -> None:
    """Write the four files of a lowered network."""
    arrays: dict[str, np.ndarray] = {}
    pops = []
    for i, p in enumerate(net.populations):
        e = {"name": p.name, "kind": p.kind, "node": p.node, "shape": list(p.shape), "slots": p.slots,
             "reset": p.reset, "membrane_bits": p.membrane_bits, "input_mode": p.input_mode,
             "spikes": p.spikes}
        if p.kind != "input":
            arrays[f"p{i}.bias_every"] = narrow(net.bias_every[p.name])
            arrays[f"p{i}.bias_first"] = narrow(net.bias_first[p.name])
        if p.kind == "if":
            arrays[f"p{i}.threshold"] = narrow(p.threshold)
            arrays[f"p{i}.v_init"] = narrow(p.v_init)
        pops.append(e)
    projs = []
    for k, pr in enumerate(net.projections):
        arrays.update({f"j{k}.{key}": v for key, v in pr.op.arrays().items()})
        projs.append({"source": pr.source, "target": pr.target, "synapses": pr.synapses, "op": pr.op.meta()})
    d = Path(directory)
    (d / "arch.json").write_text(json.dumps(arch.as_dict(), indent=1))
    (d / "mapping.json").write_text(json.dumps({"cores_used": len(cores), "cores": [c.as_dict() for c in cores]},
                                               indent=1))
    (d / "network.json").write_text(json.dumps({"layout": LAYOUT_VERSION, "timesteps": net.timesteps,
                                                "populations": pops, "projections": projs}, indent=1))
    np.savez(d / "network.npz", **arrays)


@dataclass
class Loaded:
    """A lowered network read back: architecture, cores, populations, projections."""

    arch: Architecture
    cores: list[Core]
    pops: list[dict[str, Any]]
    arrays: dict[str, np.ndarray]
    projections: list[tuple[str, str, Op]]
    timesteps: int


def load(directory: Path) -> Loaded:
    """Read an artifact written by :func:`save`; ArtifactError when incomplete or damaged."""
    d = Path(directory)
    hint = "re-run 'snncompile convert --target cyclesim'"
    try:
        arch = Architecture(**read_json(d / "arch.json", hint=hint))
        mapping = read_json(d / "mapping.json", hint=hint)
        netdoc = read_json(d / "network.json", hint=hint)
        arrays = read_npz(d / "network.npz", hint=hint)
        if netdoc.get("layout") != LAYOUT_VERSION:
            raise ValueError(f"layout version {netdoc.get('layout')!r}, expected {LAYOUT_VERSION}")
        cores = [Core(**c) for c in mapping["cores"]]
        projs = []
        for k, pr in enumerate(netdoc["projections"]):
            op = op_from(pr["op"], lambda key, k=k: arrays[f"j{k}.{key}"])
            projs.append((pr["source"], pr["target"], op))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ArtifactError(f"'{d}' is not a complete cyclesim artifact ({type(e).__name__}: {e})",
                            "re-run 'snncompile convert --target cyclesim'") from None
    return Loaded(arch, cores, netdoc["populations"], arrays, projs, int(netdoc["timesteps"] or 1))
