"""IntFire: a Lava process for the non-leaky integer integrate-and-fire neuron of snncompile.

Why a process of our own: Lava's built-in neurons (LIF, LIFReset, TernaryLIF) all reset the
membrane to zero, while snncompile's default neuron resets by subtracting the threshold.
The fixed-point model below *reuses* the LIF fixed-point arithmetic unchanged (it subclasses
``AbstractPyLifModelFixed``: input << 6, current decay with ``du``, 24-bit current wrap,
bias ``mant << exp``, 24-bit voltage saturation, threshold ``vth << 6``, strict ``v > vth``)
and changes only what snncompile's semantics need:

* reset: ``subtract`` (``v -= vth_eff``, where ``vth_eff = (vth + 1) << 6`` is the IR
  threshold) or ``zero`` (the stock behaviour);
* window: every ``window`` steps (at ``window_offset``) the state returns to ``v_reset``
  (the IR's initial membrane) and ``u`` to 0, so samples can run back to back, and the
  layer's warm-up steps before its first input arrives (one step of delay per connection)
  are discarded;
* bias ``first_step``: the bias is applied ``window`` times over on the first step of each
  window and not on the others (the IR's ``first_step`` bias mode);
* a diagnostic counter ``wraps``: inputs beyond ``current_max`` in one step (the 16-bit
  ``a_in`` port Lava declares: ``2^15 - 1``), which the chip would not carry exactly;
* membrane clamp at ``+-(v_limit << 6)``: the IR saturates at ``2^(membrane_bits-1) - 1``;
  clamping at a multiple of 64 keeps ``v`` a multiple of 64, which the ``vth = theta - 1``
  threshold mapping needs.

``LoihiConv`` (below) is Lava's Conv process with a fixed-point model that applies the
weight rules of Lava's bit-accurate Dense model (``clip_weights`` and ``truncate_weights``
of ``lava/utils/weightutils.py``, then the ``weight_exp`` shift of the sum), which Lava's own
``PyConvModelFixed`` skips, plus a synaptic delay of ``delay`` extra steps (as DelayDense).

``SpikeMaxPool`` (below) is the IR's spike-count max pool as a neuron program of our own:
a counter per window input (one compartment, one synapse), a running maximum per pool unit,
a spike when that maximum grows; reset at each window start as IntFire's state is.

``SignedIntFire`` (below) is IntFire with the IR's signed spikes (+1, or -1 that takes a
spike of the window back), sent as graded spikes.

``Recorder`` (below) records a port's values to a file, for reading results back quickly.

This file is self-contained (lava and numpy only): snncompile copies it into every Loihi
artifact. Keep it alone in its folder: Lava's compiler executes every sibling ``*.py`` file
while looking for process models.
"""

from __future__ import annotations

import typing as ty

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.process.variable import Var
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol
from lava.proc.conv import utils as conv_utils
from lava.proc.conv.models import AbstractPyConvModel
from lava.proc.conv.process import Conv
from lava.proc.lif.models import AbstractPyLifModelFixed
from lava.proc.lif.process import AbstractLIF
from lava.utils.weightutils import clip_weights, determine_sign_mode, truncate_weights

RESET_MODES = ("subtract", "zero")


class IntFire(AbstractLIF):
    """Integer IF neurons: LIF state and parameters, plus a per-neuron threshold ``vth``
    (spike when ``v > vth << 6``), a per-neuron reset value ``v_reset`` (in ``<< 6`` units),
    and the process parameters ``reset_mode``, ``window``, ``window_offset``,
    ``bias_first_step``, ``v_limit`` and ``current_max`` described in the module docstring."""

    def __init__(self, *, shape: ty.Tuple[int, ...], vth: np.ndarray, bias_mant: np.ndarray,
                 bias_exp: int = 6, v_reset: ty.Optional[np.ndarray] = None,
                 reset_mode: str = "subtract", window: int = 1, window_offset: int = 0,
                 bias_first_step: bool = False, v_limit: int = 2 ** 17 - 1,
                 current_max: int = 2 ** 15 - 1,
                 du: int = 4095, dv: int = 0, name: ty.Optional[str] = None) -> None:
        if reset_mode not in RESET_MODES:
            raise ValueError(f"reset_mode must be one of {RESET_MODES}, got {reset_mode!r}")
        v_reset = np.zeros(shape, np.int32) if v_reset is None else np.asarray(v_reset, np.int32)
        super().__init__(shape=shape, u=0, v=v_reset, du=du, dv=dv, bias_mant=bias_mant,
                         bias_exp=bias_exp, name=name, log_config=None,
                         reset_mode=reset_mode, window=int(window),
                         window_offset=int(window_offset), bias_first_step=bool(bias_first_step),
                         v_limit=int(v_limit), current_max=int(current_max))
        self.vth = Var(shape=shape, init=np.asarray(vth, np.int32))
        self.v_reset = Var(shape=shape, init=v_reset)
        self.wraps = Var(shape=(1,), init=0)


@implements(proc=IntFire, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt", "bit_accurate_loihi")
class PyIntFireModelFixed(AbstractPyLifModelFixed):
    """Fixed-point IntFire: the LIF fixed-point update with the changes listed above."""

    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)
    vth: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=17)
    v_reset: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)
    wraps: np.ndarray = LavaPyType(np.ndarray, np.int64)

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self.reset_mode = proc_params["reset_mode"]
        self.window = proc_params["window"]
        self.window_offset = proc_params["window_offset"] % self.window
        self.bias_first_step = proc_params["bias_first_step"]
        self.v_clamp = np.int32(proc_params["v_limit"]) << self.vth_shift
        self.effective_vth = 0
        self.current_max = proc_params["current_max"]

    def scale_threshold(self):
        self.effective_vth = np.left_shift(self.vth, self.vth_shift)
        self.isthrscaled = True

    def spiking_activation(self):
        return self.v > self.effective_vth

    def reset_voltage(self, spike_vector: np.ndarray):
        if self.reset_mode == "zero":
            self.v[spike_vector] = 0
        else:  # subtract the IR threshold theta = vth + 1, in << 6 units
            self.v[spike_vector] -= (self.effective_vth[spike_vector]
                                     + (np.int32(1) << self.vth_shift))

    def run_spk(self):
        a_in_data = self.a_in.recv()
        window_start = (self.time_step % self.window) == self.window_offset
        if window_start:
            self.u[:] = 0
            self.v[:] = self.v_reset
        self.scale_bias()
        if self.bias_first_step:
            self.effective_bias = self.effective_bias * self.window if window_start else 0
        if not self.isthrscaled:
            self.scale_threshold()
        self.wraps[0] += np.count_nonzero(np.abs(a_in_data) > self.current_max)
        self.subthr_dynamics(activation_in=a_in_data)
        self.v[:] = np.clip(self.v, -self.v_clamp, self.v_clamp)
        spikes = self.spiking_activation()
        self.reset_voltage(spike_vector=spikes)
        self.s_out.send(spikes)


class SignedIntFire(IntFire):
    """IntFire neurons that also send -1: the IR's signed neuron with memory (reset by
    subtraction only). A neuron sends +1 when ``v >= theta``, else -1 when ``v < 0`` and
    its net count in the window (``net``, +1s minus -1s so far) is above 0, and subtracts
    ``s * theta``; the payload (+1 or -1) travels as a graded spike, so each connection it
    feeds needs ``num_message_bits > 0`` (with 0, Lava's Dense and Conv read any non-zero
    payload as a binary spike, +1)."""

    def __init__(self, **kwargs) -> None:
        if kwargs.get("reset_mode", "subtract") != "subtract":
            raise ValueError("signed spikes need reset_mode 'subtract'")
        super().__init__(**kwargs)
        self.net = Var(shape=kwargs["shape"], init=0)


@implements(proc=SignedIntFire, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt", "bit_accurate_loihi")
class PySignedIntFireModelFixed(PyIntFireModelFixed):
    """Fixed-point SignedIntFire: IntFire's update (window reset, bias, clamp, wraps), with
    the signed spike rule and a per-neuron net count that returns to 0 with the window."""

    implements_process = None   # a model of its own process: Lava refuses to replace an inherited one
    net: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)

    def spiking_activation(self):
        if (self.time_step % self.window) == self.window_offset:
            self.net[:] = 0   # the window starts: IntFire's run_spk has just reset u and v
        up = self.v > self.effective_vth                # v >= theta (v is a multiple of 64)
        down = (self.v < 0) & (self.net > 0)            # takes a spike of this window back
        return up.astype(np.int32) - down.astype(np.int32)

    def reset_voltage(self, spike_vector: np.ndarray):
        theta = self.effective_vth + (np.int32(1) << self.vth_shift)
        self.v[:] = self.v - spike_vector * theta
        self.net[:] = self.net + spike_vector


class LoihiConv(Conv):
    """Lava's Conv with ``delay`` extra steps of synaptic delay (0..63, as DelayDense)."""

    def __init__(self, *, delay: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.delay = Var(shape=(1,), init=int(delay))


@implements(proc=LoihiConv, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyLoihiConvModelFixed(AbstractPyConvModel):
    """Conv with the synapse arithmetic of Lava's bit-accurate Dense model: weights clipped to
    8 bits by sign mode and their low bits truncated (mixed sign: one bit) before use, the
    sum shifted by ``weight_exp``; sent ``1 + delay`` steps after it arrived. Ports and
    weight as in Lava's ``PyConvModelFixed``, but ``a_out`` 16-bit like Dense's."""

    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=16)
    a_buf: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)
    weight: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=8)
    delay: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=6)
    # Lava's model holds groups as int8: 128 or more groups (a depthwise conv of 128
    # channels, a sum-pool relay of as many) wrapped to a negative count
    groups: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self.fifo = None

    def run_spk(self) -> None:
        if self.fifo is None:
            sign_mode = determine_sign_mode(self.weight)
            self.weight = clip_weights(self.weight, sign_mode, num_bits=8)
            self.weight = truncate_weights(self.weight, sign_mode, int(self.num_weight_bits.item()))
            self.fifo = [np.zeros(self.a_out.shape, np.int32)] * (int(self.delay.item()) + 1)
        self.a_out.send(self.fifo.pop(0))
        s_in = self.s_in.recv()
        if self.num_message_bits.item() == 0:
            s_in = s_in.astype(bool)
        acc = conv_utils.conv(s_in, self.weight, self.kernel_size, self.stride, self.padding,
                              self.dilation, self.groups[0]).astype(np.int64)
        exp = int(self.weight_exp.item())
        acc = np.left_shift(acc, exp) if exp > 0 else np.right_shift(acc, -exp)
        self.fifo.append(acc.astype(np.int32))


class Recorder(AbstractProcess):
    """Records its input every step and saves all of it, (size, steps), to ``path`` (.npy)
    after step ``steps``. Reading a sink's Var back after the run costs one message per
    element (tens of seconds for a few hundred thousand values); a file costs nothing."""

    def __init__(self, *, shape: ty.Tuple[int, ...], steps: int, path: str,
                 name: ty.Optional[str] = None) -> None:
        super().__init__(shape=shape, steps=int(steps), path=str(path), name=name)
        self.a_in = InPort(shape=shape)


@implements(proc=Recorder, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyRecorderModel(PyLoihiProcessModel):
    """Host-side recorder (not a Loihi resource): buffers in the model, writes at the end."""

    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32)

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self.steps = proc_params["steps"]
        self.path = proc_params["path"]
        self.buffer = np.zeros(proc_params["shape"] + (self.steps,), np.int32)

    def run_spk(self):
        data = self.a_in.recv()
        if self.time_step <= self.steps:
            self.buffer[..., self.time_step - 1] = data
        if self.time_step == self.steps:
            np.save(self.path, self.buffer)


class SpikeMaxPool(AbstractProcess):
    """Spike-count max pooling (the IR's maxpool2d on spikes): ``channels * slots *
    positions`` input compartments, ordered (channel, window slot, position), each counting
    the spikes its one synapse brings; ``channels * positions`` pool units, each keeping the
    running maximum of its ``slots`` counters and spiking in the step that maximum grows. So
    a unit's spike count over a window is the maximum of its inputs' counts, and it spikes at
    most once per step. Counters and maxima are ``count_bits`` wide (they wrap beyond: the
    compiler refuses a T they cannot hold) and return to zero at the start of each window
    (``window``, ``window_offset``), as IntFire's state does."""

    def __init__(self, *, channels: int, slots: int, positions: int, window: int = 1,
                 window_offset: int = 0, count_bits: int = 24,
                 name: ty.Optional[str] = None) -> None:
        if not 1 <= int(count_bits) <= 31:
            raise ValueError(f"count_bits must be in 1..31, got {count_bits}")
        units = int(channels) * int(positions)
        size = units * int(slots)
        super().__init__(channels=int(channels), slots=int(slots), positions=int(positions),
                         window=int(window), window_offset=int(window_offset),
                         count_bits=int(count_bits), name=name, shape=(units,))
        self.a_in = InPort(shape=(size,))
        self.s_out = OutPort(shape=(units,))
        self.counts = Var(shape=(size,), init=0)
        self.running_max = Var(shape=(units,), init=0)
        self.wraps = Var(shape=(1,), init=0)


@implements(proc=SpikeMaxPool, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt", "bit_accurate_loihi")
class PySpikeMaxPoolModelFixed(PyLoihiProcessModel):
    """Fixed-point spike-count max pool: at a window start every counter and maximum
    returns to 0; then each counter adds its input (the 0/1 spike of its one synapse) and
    wraps at ``count_bits`` like a register; each unit's maximum over its slots replaces
    the stored one, and the unit spikes where it grew. ``wraps`` counts counters that
    wrapped (never, when T fits the counters). Like IntFire, no delay: the spike leaves in
    the step its input arrived."""

    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=16)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=1)
    counts: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)
    running_max: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)
    wraps: np.ndarray = LavaPyType(np.ndarray, np.int64)

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self.grid = (proc_params["channels"], proc_params["slots"], proc_params["positions"])
        self.window = proc_params["window"]
        self.window_offset = proc_params["window_offset"] % self.window
        self.top = (1 << proc_params["count_bits"]) - 1

    def run_spk(self):
        a_in_data = self.a_in.recv()
        if (self.time_step % self.window) == self.window_offset:
            self.counts[:] = 0
            self.running_max[:] = 0
        total = self.counts.astype(np.int64) + a_in_data
        self.wraps[0] += np.count_nonzero((total > self.top) | (total < 0))
        self.counts[:] = total & self.top
        m = self.counts.reshape(self.grid).max(axis=1).reshape(-1)
        spikes = m > self.running_max
        self.running_max[:] = m
        self.s_out.send(spikes)
