"""Export a lowered network in lava-dl's netx HDF5 layout, where the network fits it.

netx (``lava.lib.dl.netx.hdf5.Network``) builds a *chain* of blocks, each a connection plus
a layer of Lava's stock LIF neurons configured from ``neuron/{type, iDecay, vDecay, vThMant,
refDelay, gradedSpike}`` (type ``CUBA``: ``du = iDecay - 1``, ``dv = vDecay``, ``vth =
vThMant``, ``bias_exp = 6``). The stock LIF resets to zero, so a network fits netx when:

* it is a chain: every population has exactly one incoming connection, from the one before;
* every IF layer resets to zero, starts at v = 0, has one threshold per layer and a per-step
  bias within the 13-bit ``bias_mant`` (netx has no subtract reset, initial membrane,
  per-channel threshold, first-step bias or wider bias; its LIF and LIFReset take one ``vth``);
* every weight is an 8-bit integer (exponent 0): netx's reader re-quantizes weights itself
  (``netx.utils.optimize_weight_bits``, which clips beyond 254);
* the output accumulator stays within ``vThMant = 2^17 - 1`` over the window (else its neuron
  would spike and reset), from the same per-step bound ``check`` uses;
* no connection's dense matrix exceeds 2^24 entries (written as dense blocks).

netx's neuron types are CUBA/LOIHI (LIF, LIFReset: reset to zero), SDNN (sigma-delta) and
resonators: none resets by subtraction, snncompile's default, so a default build has no
``netx.h5`` and ``netx-unsupported.txt`` says why.
Signed spikes are not netx either: no netx neuron sends the signed neuron's -1 (SDNN's
sigma-delta neurons send signed deltas of their activation, a different rule).

Each population becomes a ``dense`` layer with its folded integer weights (shape stored as
``[size]``, flat in the IR's row-major order; a convolution is written as the dense matrix it
is, as :func:`snncompile.plugin.flatten_network` composes it) and a ``CUBA`` neuron with ``iDecay = 4096``
(current lasts one step: ``du = 4095``), ``vDecay = 0`` (no leak) and ``vThMant = theta -
1`` (LIF spikes on ``v > vth``, the IR on ``v >= theta``). The output accumulator has no
netx equivalent; it is written as a last ``dense`` layer whose neurons never spike (``vThMant
= 2^17 - 1``): read its voltage (``v >> 6`` at the window's last step). The input enters
layer 0 as graded spikes; with input ``once``, its charge is T times the level at the first
step. Load it with ``netx.hdf5.Network(net_config=path, input_message_bits=16,
reset_interval=T, reset_offset=1)``: netx resets block ``i`` at ``reset_offset + 1 + i``
(Lava counts from 1), and block ``i`` receives the window's first input at step ``i + 2``.
The file is written with h5py only; lava-dl 0.6.0 pins torch 2.3, so it is never a runtime
dependency (``make setup`` puts its source beside the venv for the tests only).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from snncompile.plugin import FlatNetwork

from .encode import WEIGHT_MANT_MAX, bias_fits_neuron
from .network import MAX_DENSE_ENTRIES, Network
from .rules import current_bound

VTH_MAX = 2 ** 17 - 1


def netx_problems(net: Network) -> list[str]:
    """Why ``net`` cannot be written as netx (empty when it can)."""
    why = [f"'{p.name}' is a spike-count max pool (netx's blocks are dense/conv/pool layers of "
           "stock neurons; none keeps a running maximum of spike counts)" for p in net.pools]
    prev = net.input_name
    sizes = {q.name: q.size for q in list(net.populations) + list(net.pools)}
    chain = sorted(list(net.populations) + list(net.pools), key=lambda q: q.depth)  # pools already named
    for p in chain + list(net.outputs):
        inc = net.incoming(p.name)
        if len(inc) != 1 or inc[0].src != prev:
            why.append(f"'{p.name}' is not fed by exactly the layer before it (netx builds chains)")
        prev = p.name
        if any(c.delay for c in inc):
            why.append(f"'{p.name}' has a delayed (skip) connection")
        for c in inc:
            if int(np.abs(c.weight).max(initial=0)) > WEIGHT_MANT_MAX:
                why.append(f"'{p.name}' has weights beyond +-{WEIGHT_MANT_MAX} (a weight exponent or "
                           "folded weights; netx re-quantizes and clips them)")
            src_size = int(np.prod(net.input_shape)) if c.src == net.input_name else sizes.get(c.src, 0)
            if src_size * p.size > MAX_DENSE_ENTRIES:
                why.append(f"'{p.name}' would need a dense block of {src_size * p.size} entries "
                           f"(more than {MAX_DENSE_ENTRIES}; netx conv blocks are not written)")
    for b in net.bias_sources:
        why.append(f"'{b.dst}' has a bias wider than the 13-bit mantissa (sent as graded spikes here)")
    if len(net.outputs) != 1:
        why.append("netx networks have one output")
    for o in net.outputs:
        top = net.timesteps * (current_bound(net, o.name) + int(np.abs(o.bias).max(initial=0)))
        if top > VTH_MAX:
            why.append(f"the output '{o.name}' can accumulate {top} over the window, beyond the "
                       f"largest threshold {VTH_MAX} of the never-spiking neuron that holds it")
        if not bias_fits_neuron(o.bias):
            why.append(f"the output '{o.name}' has a bias wider than the 13-bit mantissa")
        if o.parts > 1:
            why.append(f"the output '{o.name}' is split into {o.parts} accumulators (its input per "
                       "step exceeds the 16-bit port); netx has one output block")
    for p in net.populations:
        if p.reset != "zero":
            why.append(f"'{p.name}' resets by subtraction (netx's LIF resets to zero)")
        if np.any(p.v_init):
            why.append(f"'{p.name}' starts at a non-zero membrane")
        if np.unique(p.theta).size != 1:
            why.append(f"'{p.name}' has more than one threshold (netx: one vThMant per layer)")
        if p.bias_first_step:
            why.append(f"'{p.name}' has a first-step bias (netx: a constant bias)")
        if p.spikes == "signed":
            why.append(f"'{p.name}' sends signed spikes (-1 takes a spike back): no netx neuron "
                       "does (CUBA/LOIHI are Lava's LIF neurons; SDNN sends quantized deltas of its "
                       "activation, not a -1 that takes back a spike)")
    return why


def _text(g: h5py.Group, key: str, value: str) -> None:
    g.create_dataset(key, (1,), f"S{max(len(value), 1)}", [value.encode("ascii")])


def _layer(g: h5py.Group, weight: np.ndarray, bias: np.ndarray, vth: int) -> None:
    _text(g, "type", "dense")
    g.create_dataset("shape", data=np.array([weight.shape[0]], np.int64))
    g.create_dataset("weight", data=weight.astype(np.float32))
    g.create_dataset("bias", data=bias.astype(np.float32))
    n = g.create_group("neuron")
    _text(n, "type", "CUBA")
    n.create_dataset("iDecay", data=4096)
    n.create_dataset("vDecay", data=0)
    n.create_dataset("vThMant", data=int(vth))
    n.create_dataset("refDelay", data=1)
    n.create_dataset("gradedSpike", data=False)


def _weight(flat: FlatNetwork, name: str) -> np.ndarray:
    """The (size, source size) integer matrix of the one connection into ``name``."""
    return flat.into(name)[0].matrix.toarray()


def write_netx(net: Network, flat: FlatNetwork, path: Path) -> list[str]:
    """Write ``path`` when the network (built from ``flat``) fits netx; return the reasons
    when it does not."""
    why = netx_problems(net)
    if why:
        return why
    with h5py.File(path, "w") as f:
        _text(f, "simulator", "lava")
        layers = f.create_group("layer")
        for i, p in enumerate(net.populations):
            _layer(layers.create_group(str(i)), _weight(flat, p.name), p.bias,
                   int(p.theta[0]) - 1)
        out = net.outputs[0]
        _layer(layers.create_group(str(len(net.populations))), _weight(flat, out.name),
               out.bias, VTH_MAX)
    return []
