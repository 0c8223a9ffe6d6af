#!/usr/bin/env python3
"""Run a snncompile Loihi artifact on Lava's bit-accurate CPU simulator (lava-nc only).

    python run_lava.py --input x_int.npz --output result.npz [--timesteps T] [--record-spikes]

``x_int.npz`` holds ``x``: integer input levels (N, *input shape). ``result.npz`` receives,
per output ``<name>``, ``out/<name>`` (N, size): the output accumulator (sum over the window
of the output layer's input current), and with ``--record-spikes`` ``spikes/<name>`` (T, N,
size) uint8 per IF layer (int8 for signed spikes), and ``wraps/<name>``: inputs beyond the 24-bit current
register (results may then differ from the reference), all on the reference time axis (the delays removed), plus
``wall_s``/``steps`` timings.

The network is described by ``network.json`` and ``params.npz`` beside this file:
populations of IntFire neurons (``lava_intfire/intfire.py``; SignedIntFire for signed
spikes, whose connections take graded messages), spike-count max pools (``SpikeMaxPool``:
a counter per window input, fed by a one-hot Conv or a Dense), Dense connections with exact
weights ``m * 2^e`` (8-bit mantissa m: ``weights = 2 m``, ``weight_exp = e - 1``), a DelayDense
where a shorter branch joins a longer one, biases wider than the neuron's
13-bit mantissa as constant graded spikes (``bias_sources``), or Conv connections (``LoihiConv``:
the same weight rules, kernel flipped and transposed to Lava's layout, optionally delayed),
a sum pool in front of a Conv or Dense as a relay (a depthwise LoihiConv of ones whose
window sums reach the next connection as graded spikes, one step later),
the input as graded spikes from a
RingBuffer (``num_message_bits = 16``), and every output read from its Dense by a Recorder
(``lava_intfire/intfire.py``) that saves what it received to a file at the last step. Samples run back to back, ``T`` steps each with no gap: every population resets
its state at the start of its own window (offset by its depth, one step per connection).

`snncompile run` executes this file from the installed snncompile_loihi package, with
``--network ARTIFACT/loihi`` (data only: JSON and integer arrays) and ``--processes`` a
copy of the package's ``lava_intfire``; never the copy in an artifact. That copy, with
``lava_intfire/`` beside it, is for running an artifact by hand where snncompile is not
installed (the defaults of ``--network`` and ``--processes`` are this file's folder). It
imports only lava-nc and numpy (lava-nc 0.10.0 needs Python 3.10 and numpy < 2).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
FORMAT = "snncompile-loihi-net"
MESSAGE_BITS = 16


def load_network(directory: str = HERE) -> tuple[dict, dict]:
    """The network description and its parameter arrays."""
    with open(os.path.join(directory, "network.json")) as f:
        net = json.load(f)
    if net.get("format") != FORMAT:
        raise SystemExit(f"{directory}/network.json is not a {FORMAT} file")
    with np.load(os.path.join(directory, "params.npz"), allow_pickle=False) as z:
        params = {k: z[k] for k in z.files}
    return net, params


def input_columns(net: dict, x: np.ndarray, T: int) -> np.ndarray:
    """The RingBuffer data (n_in, N*T): the input charge of each sample's window."""
    n = x.shape[0]
    flat = x.reshape(n, -1).astype(np.int64)
    cols = np.zeros((flat.shape[1], n * T), np.int64)
    if net["input"]["mode"] == "every_step":
        cols[:] = np.repeat(flat.T, T, axis=1)
    else:  # once: all the charge (T times the level) at the first step of the window
        cols[:, ::T] = flat.T * T
    top = 2 ** (MESSAGE_BITS - 1) - 1
    if np.abs(cols).max(initial=0) > top:
        raise SystemExit(f"input charge {np.abs(cols).max()} does not fit a {MESSAGE_BITS}-bit "
                         f"graded spike (max {top}); use fewer time steps or input bits")
    return cols.astype(np.int32)


def bias_digits(charge: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Balanced base-128 digits (size, K), each in -64..63, and payloads 128^k, such that
    digits @ payloads == charge: a wide bias as K graded channels through 8-bit weights."""
    rest = charge.copy()
    digits = []
    while np.any(rest) or not digits:
        d = (rest + 64) % 128 - 64
        digits.append(d)
        rest = (rest - d) // 128
    payload = 128 ** np.arange(len(digits), dtype=np.int64)
    if payload[-1] > 2 ** (MESSAGE_BITS - 1) - 1:
        raise SystemExit(f"a bias charge of {np.abs(charge).max()} needs more than {MESSAGE_BITS}-bit "
                         "graded spikes; use fewer time steps")
    return np.stack(digits, axis=1), payload


def conv_connect(c: dict, w: np.ndarray, bits: int, src_port, dst_port, Conv) -> None:
    """A Conv (``LoihiConv``: Lava's Conv with the Dense weight rules, a weight exponent and
    a delay) between flat populations. Lava lays images out (W, H, C) and computes a
    true convolution with weights (Cout, kW, kH, Cin): flip the (cross-correlation) kernel
    in space and transpose it; views of the ports reorder the flat (C, H, W) neurons.
    ``w`` is the weight mantissa: passed as ``2 w`` with ``weight_exp - 1``, as for Dense."""
    c_in, h_in, w_in = c["in_shape"]
    c_out, h_out, w_out = c["out_shape"]
    kernel = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(0, 3, 2, 1))
    conv = Conv(weight=2 * kernel, weight_exp=c["weight_exp"] - 1, input_shape=(w_in, h_in, c_in),
                padding=tuple(c["padding"][::-1]), stride=tuple(c["stride"][::-1]),
                dilation=tuple(c["dilation"][::-1]), groups=c["groups"], num_message_bits=bits,
                delay=c.get("delay", 0), name=c["name"])
    src_port.reshape((c_in, h_in, w_in)).transpose([2, 1, 0]).connect(conv.s_in)
    out = conv.a_out.transpose([2, 1, 0]).reshape((c_out * h_out * w_out,))
    if dst_port is None:
        return out
    out.connect(dst_port)
    return None


def pool_relay(c: dict, bits: int, src_port, Conv):
    """The sum pool in front of connection ``c``: a depthwise Conv with a kernel of ones whose
    window sums go on as graded spikes (one step later, as any connection); returns its flat
    output port."""
    (kh, kw), stride, padding = c["pool"]["kernel"], c["pool"]["stride"], c["pool"]["padding"]
    channels = c["src_shape"][0]
    relay = {"name": f"{c['name']} pool", "in_shape": c["src_shape"], "out_shape": c["in_shape"],
             "padding": padding, "stride": stride, "dilation": [1, 1], "groups": channels,
             "weight_exp": 0, "delay": 0}
    return conv_connect(relay, np.ones((channels, 1, kh, kw), np.int32), bits, src_port, None, Conv)


def build(net: dict, params: dict, cols: np.ndarray, T: int, steps: int, record_spikes: bool,
          tmp: str, processes: str = HERE):
    """Create the Lava processes; returns (source, populations, output files, spike files).
    Recorders write each output's current and each layer's spikes to .npy files in ``tmp``.
    ``processes``: the folder holding ``lava_intfire/``."""
    sys.path.insert(0, processes)
    from lava.proc.dense.process import Dense, DelayDense
    from lava.proc.io.source import RingBuffer as Source
    from lava_intfire.intfire import IntFire, LoihiConv, Recorder, SignedIntFire, SpikeMaxPool

    files = []

    def Sink(shape, name):
        files.append(os.path.join(tmp, f"{len(files)}.npy"))
        return Recorder(shape=shape, steps=steps, path=files[-1], name=f"record {name}"), files[-1]

    source = Source(data=cols)
    ports = {net["input"]["name"]: source.s_out}
    targets = {}
    spike_sinks = {}
    pops = {}
    for p in net["populations"]:
        name, size = p["name"], p["size"]
        neuron = SignedIntFire if p.get("spikes", "binary") == "signed" else IntFire
        pop = neuron(shape=(size,), vth=params[f"pop/{name}/vth"],
                      bias_mant=params[f"pop/{name}/bias_mant"], bias_exp=6,
                      v_reset=params[f"pop/{name}/v_init"] * 64, reset_mode=p["reset"],
                      window=T, window_offset=(1 + p["depth"]) % T,
                      bias_first_step=p["bias_first_step"], v_limit=p["v_limit"],
                      current_max=net["current_max"], name=name)
        ports[name] = pop.s_out
        pops[name] = pop
        targets[name] = pop.a_in
        if record_spikes:
            rec, spike_sinks[name] = Sink((size,), name)
            pop.s_out.connect(rec.a_in)
    for p in net.get("pools", []):  # spike-count max pools: counters fed like a population
        name, (c, h, w) = p["name"], p["shape"]
        if T > (1 << p["count_bits"]) - 1:
            raise SystemExit(f"max pool {name}: its {p['count_bits']}-bit spike counters hold at "
                             f"most {(1 << p['count_bits']) - 1} steps, not T = {T}")
        pool = SpikeMaxPool(channels=c, slots=p["slots"], positions=h * w, window=T,
                            window_offset=(1 + p["depth"]) % T, count_bits=p["count_bits"], name=name)
        ports[name] = pool.s_out
        pops[name] = pool
        targets[name] = pool.a_in
        if record_spikes:
            rec, spike_sinks[name] = Sink((p["size"],), name)
            pool.s_out.connect(rec.a_in)
    out_sinks = {}
    for o in net["outputs"]:
        out_sinks[o["name"]] = []
        for k in range(o.get("parts", 1)):  # a split output: accumulators the host adds up
            rec, path = Sink((o["size"],), f"{o['name']} #{k}")
            out_sinks[o["name"]].append(path)
            targets[_part(o["name"], k)] = rec.a_in
    for b in net.get("bias_sources", []):  # wide biases as constant graded spikes
        charge = params[f"bias/{b['name']}/bias"].astype(np.int64) * (T if b["first_step"] else 1)
        digits, payload = bias_digits(charge)
        data = np.zeros((len(payload), steps), np.int32)
        if b["first_step"]:  # the window's first step at depth d is fed from column d-1+iT
            data[:, b["depth"] - 1::T] = payload[:, None]
        else:
            data[:] = payload[:, None]
        dense = Dense(weights=2 * digits.astype(np.int32), weight_exp=-1,
                      num_message_bits=MESSAGE_BITS, name=b["name"])
        Source(data=data).s_out.connect(dense.s_in)
        dense.a_out.connect(targets[b["dst"]])
    for c in net["connections"]:
        graded = c["src"] == net["input"]["name"]
        w = params[f"conn/{c['name']}/weight"].astype(np.int32)
        bits = c.get("message_bits", MESSAGE_BITS if graded else 0)  # signed spikes: graded
        src = ports[c["src"]]
        dst = targets[_part(c["dst"], c.get("part", 0))]
        if c.get("pool"):
            src, bits = pool_relay(c, bits, src, LoihiConv), MESSAGE_BITS
        if c["kind"] == "conv":
            conv_connect(c, w, bits, src, dst, LoihiConv)
        else:
            delay, exp = c.get("delay", 0), c["weight_exp"] - 1
            if delay:  # a skip over shorter branches: DelayDense adds `delay` steps
                dense = DelayDense(weights=2 * w, delays=np.full(w.shape, delay, dtype=int),
                                   max_delay=delay, weight_exp=exp, num_message_bits=bits,
                                   name=c["name"])
            else:
                dense = Dense(weights=2 * w, weight_exp=exp, num_message_bits=bits, name=c["name"])
            src.connect(dense.s_in)
            dense.a_out.connect(dst)
    return source, pops, out_sinks, spike_sinks


def _part(name: str, part: int) -> str:
    """The target name of accumulator ``part`` of an output (0: the output's own name)."""
    return f"{name}#{part}" if part else name


def run(x: np.ndarray, T: int | None = None, record_spikes: bool = False,
        directory: str = HERE, processes: str = HERE) -> dict[str, np.ndarray]:
    """Run the network on integer inputs ``x`` (N, *shape); results on the reference time axis."""
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg

    net, params = load_network(directory)
    T = int(T or net["timesteps"])
    n = x.shape[0]
    depth = max([o["depth"] for o in net["outputs"]] + [p["depth"] for p in net["populations"]]
                + [p["depth"] for p in net.get("pools", [])])
    steps = n * T + depth
    cols = input_columns(net, x, T)
    t0 = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix="run_lava-")
    source, pops, out_sinks, spike_sinks = build(net, params, cols, T, steps, record_spikes, tmp,
                                                 processes)
    result: dict[str, np.ndarray] = {}
    try:
        cfg = Loihi2SimCfg(select_tag="fixed_pt")
        t1 = time.perf_counter()
        source.run(condition=RunSteps(num_steps=1), run_cfg=cfg)  # compiles and starts processes
        t1b = time.perf_counter()
        if steps > 1:
            source.run(condition=RunSteps(num_steps=steps - 1), run_cfg=cfg)
        t2 = time.perf_counter()
        for o in net["outputs"]:
            data = sum(np.load(f).astype(np.int64) for f in out_sinks[o["name"]])  # (size, steps)
            d = o["depth"]
            win = data[:, d:d + n * T].reshape(o["size"], n, T).sum(axis=2).T
            result[f"out/{o['name']}"] = win + T * params[f"out/{o['name']}/bias"].astype(np.int64)
        for p in net["populations"] + net.get("pools", []):
            if p["name"] in spike_sinks:
                data = np.load(spike_sinks[p["name"]])
                d = p["depth"]
                s = data[:, d:d + n * T].reshape(p["size"], n, T)
                kind = np.int8 if p.get("spikes", "binary") == "signed" else np.uint8  # -1 spikes
                result[f"spikes/{p['name']}"] = np.transpose(s, (2, 1, 0)).astype(kind)
        for name, pop in pops.items():
            result[f"wraps/{name}"] = np.asarray(pop.wraps.get(), np.int64).reshape(())
    finally:
        source.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    t3 = time.perf_counter()
    result["wall_s"] = np.array([t1 - t0, t1b - t1, t2 - t1b, t3 - t2])  # build, compile+1 step, rest, read back
    result["steps"] = np.array(steps)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", required=True, help=".npz with x: integer input levels (N, ...)")
    ap.add_argument("--output", required=True, help=".npz to write the results to")
    ap.add_argument("--timesteps", type=int, default=None)
    ap.add_argument("--record-spikes", action="store_true")
    ap.add_argument("--network", default=HERE,
                    help="folder with network.json and params.npz (default: this file's)")
    ap.add_argument("--processes", default=HERE,
                    help="folder holding lava_intfire/ (default: this file's)")
    a = ap.parse_args(argv)
    with np.load(a.input, allow_pickle=False) as z:
        x = z["x"]
    res = run(x, a.timesteps, a.record_spikes, a.network, a.processes)
    np.savez(a.output, **res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
