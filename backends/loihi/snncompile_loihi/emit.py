"""Write a lowered network as a Loihi artifact that runs with lava-nc alone.

    <dir>/network.json        populations, max pools, connections, outputs, time window
    <dir>/params.npz          integer arrays: pop/<name>/{theta,bias,v_init} (IR values) and
                              pop/<name>/{vth,bias_mant} (the Lava registers),
                              conn/<name>/weight (int8 mantissa m, the weight being
                              m * 2^weight_exp with weight_exp in network.json; dense:
                              dst x src, conv: Cout x Cin/groups x kH x kW as in the IR;
                              with "pool", src is the sum pool of the source population),
                              bias/<name>/bias (biases too wide for the neuron), out/<name>/bias
    <dir>/run_lava.py         the entry point (lava-nc + numpy only)
    <dir>/lava_intfire/       the IntFire and SpikeMaxPool processes and their fixed-point models
    <dir>/netx.h5             lava-dl netx layout, where the network fits it (see netx.py)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from . import __version__
from . import limits as L
from .encode import SPIKE_PAYLOADS, bias_code, delay_code, message_bits, vth_code, weight_code
from .network import Network

FORMAT = "snncompile-loihi-net"
VERSION = 2   # 2: weight mantissas with a per-connection weight_exp; vth and bias_mant
PACKAGE = Path(__file__).resolve().parent
RUNNER = PACKAGE / "runner" / "run_lava.py"
PROCESS_DIR = PACKAGE / "lava_intfire"


def network_manifest(net: Network) -> dict:
    """The JSON description of ``net`` (arrays go to params.npz)."""
    return {
        "format": FORMAT, "version": VERSION, "generator": f"snncompile-loihi {__version__}",
        "timesteps": net.timesteps, "current_max": L.CURRENT_MAX,
        "input": {"name": net.input_name, "shape": list(net.input_shape), "mode": net.input_mode,
                  "bits": net.input_bits, "size": int(np.prod(net.input_shape))},
        "populations": [{"name": p.name, "shape": list(p.shape), "size": p.size, "depth": p.depth,
                         "reset": p.reset, "membrane_bits": p.membrane_bits,
                         "v_limit": 2 ** (p.membrane_bits - 1) - 1,
                         "bias_first_step": p.bias_first_step, "spikes": p.spikes}
                        for p in net.populations],
        "connections": [dict(_connection(c), message_bits=message_bits(_source_kind(net, c.src)),
                             part=c.part) for c in net.connections],
        "bias_sources": [{"name": b.name, "dst": b.dst, "depth": b.depth,
                          "first_step": b.first_step}
                         for b in net.bias_sources],
        "outputs": [{"name": o.name, "shape": list(o.shape), "size": o.size, "depth": o.depth,
                     "parts": o.parts} for o in net.outputs],
        "pools": [{"name": p.name, "shape": list(p.shape), "size": p.size, "depth": p.depth,
                   "slots": p.slots, "count_bits": p.count_bits} for p in net.pools],
    }


def _source_kind(net: Network, src: str) -> str:
    """What a connection from ``src`` carries: "input", or the population's (or a max pool's:
    binary) spike kind."""
    if src == net.input_name:
        return "input"
    # a max pool's spikes are binary
    return next((p.spikes for p in net.populations if p.name == src), "binary")


def _connection(c) -> dict:
    d = {"name": c.name, "src": c.src, "dst": c.dst, "kind": c.kind, "shape": list(c.weight.shape),
         "delay": delay_code(c.delay), "weight_exp": weight_code(c.weight)[1]}
    if c.kind == "conv":
        d.update({"in_shape": list(c.in_shape), "out_shape": list(c.out_shape),
                  "stride": list(c.stride), "padding": list(c.padding),
                  "dilation": list(c.dilation), "groups": c.groups})
    if c.pool is not None:
        (kernel, stride, padding) = c.pool
        d.update({"in_shape": list(c.in_shape), "src_shape": list(c.src_shape),
                  "pool": {"kernel": list(kernel), "stride": list(stride), "padding": list(padding)}})
    return d


def network_arrays(net: Network) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for p in net.populations:
        arrays[f"pop/{p.name}/theta"] = p.theta.astype(np.int32)
        arrays[f"pop/{p.name}/bias"] = p.bias.astype(np.int32)
        arrays[f"pop/{p.name}/v_init"] = p.v_init.astype(np.int32)
        arrays[f"pop/{p.name}/vth"] = vth_code(p.theta)
        arrays[f"pop/{p.name}/bias_mant"] = bias_code(p.bias)
    for c in net.connections:
        arrays[f"conn/{c.name}/weight"] = weight_code(c.weight)[0]
    for b in net.bias_sources:
        arrays[f"bias/{b.name}/bias"] = b.bias.astype(np.int64)
    for o in net.outputs:
        arrays[f"out/{o.name}/bias"] = o.bias.astype(np.int64)
    return arrays


def write_artifact(net: Network, directory: Path) -> None:
    """Write everything ``run_lava.py`` needs into ``directory`` (existing)."""
    directory = Path(directory)
    (directory / "network.json").write_text(json.dumps(network_manifest(net), indent=1))
    np.savez_compressed(directory / "params.npz", **network_arrays(net))
    shutil.copyfile(RUNNER, directory / "run_lava.py")
    proc = directory / "lava_intfire"
    proc.mkdir(exist_ok=True)
    shutil.copyfile(PROCESS_DIR / "intfire.py", proc / "intfire.py")
    (proc / "__init__.py").write_text("")


def read_network(directory: Path) -> Network:
    """The network of an artifact written by :func:`write_artifact`."""
    from snncompile.plugin import ArtifactError

    from .network import BiasSource, Connection, IntFireLayer, MaxPoolLayer, Output

    directory = Path(directory)
    try:
        m = json.loads((directory / "network.json").read_text())
        z = np.load(directory / "params.npz", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ArtifactError(f"cannot read the loihi network in {directory}: {e}") from None
    if m.get("format") != FORMAT or m.get("version") != VERSION:
        raise ArtifactError(f"{directory}/network.json is not a {FORMAT} v{VERSION} file")
    with z:
        inp = m["input"]
        net = Network(inp["name"], tuple(inp["shape"]), inp["mode"], inp["bits"], m["timesteps"])
        for p in m["populations"]:
            if p.get("spikes", "binary") not in SPIKE_PAYLOADS:
                raise ArtifactError(f"{directory}/network.json: population '{p['name']}' has unknown "
                                    f"spikes {p['spikes']!r} (binary or signed)")
            k = f"pop/{p['name']}/"
            net.populations.append(IntFireLayer(
                p["name"], tuple(p["shape"]), p["depth"], z[k + "theta"].astype(np.int64),
                z[k + "v_init"].astype(np.int64), z[k + "bias"].astype(np.int64),
                p["bias_first_step"], p["reset"], p["membrane_bits"], p.get("spikes", "binary")))
        for c in m["connections"]:
            w = z[f"conn/{c['name']}/weight"].astype(np.int64) << c["weight_exp"]
            conv = {} if c["kind"] != "conv" else {
                "in_shape": tuple(c["in_shape"]), "out_shape": tuple(c["out_shape"]),
                "stride": tuple(c["stride"]), "padding": tuple(c["padding"]),
                "dilation": tuple(c["dilation"]), "groups": c["groups"]}
            if c.get("pool"):
                conv.update(in_shape=tuple(c["in_shape"]), src_shape=tuple(c["src_shape"]),
                            pool=tuple(tuple(c["pool"][k]) for k in ("kernel", "stride", "padding")))
            net.connections.append(Connection(c["name"], c["src"], c["dst"], w,
                                              int(np.abs(w).max(initial=0)) >> c["weight_exp"],
                                              kind=c["kind"], delay=c.get("delay", 0),
                                              part=c.get("part", 0), **conv))
        for b in m.get("bias_sources", []):
            net.bias_sources.append(BiasSource(b["name"], b["dst"], b["depth"],
                                               z[f"bias/{b['name']}/bias"].astype(np.int64),
                                               b["first_step"]))
        for p in m.get("pools", []):
            net.pools.append(MaxPoolLayer(p["name"], tuple(p["shape"]), p["depth"], p["slots"],
                                          p["count_bits"]))
        for o in m["outputs"]:
            net.outputs.append(Output(o["name"], tuple(o["shape"]), o["depth"],
                                      z[f"out/{o['name']}/bias"].astype(np.int64), o.get("parts", 1)))
    return net
