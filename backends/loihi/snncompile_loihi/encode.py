"""The numbers the loihi backend hands to Lava, each made by one function that ``check`` uses too.

Every register value in an artifact (weight mantissas and their exponent, thresholds, neuron
biases, synaptic delays, graded-spike payloads) is produced here, and the rules in
:mod:`snncompile_loihi.rules` decide whether a network fits by calling the same functions
(a value that does not fit raises :class:`DoesNotFit`, which the rule turns into a violation).
So ``check`` passes exactly the networks whose emitted values Lava and the chip hold.

The arithmetic is read from lava-nc 0.10.0:

* weights (``lava/proc/dense/models.py`` ``AbstractPyDenseModelBitAcc`` with
  ``lava/utils/weightutils.py``): the 8-bit weight is clipped by sign mode (mixed:
  -256..255), its low ``8 - num_weight_bits + mixed`` bits are truncated, and the
  accumulated sum is shifted by ``weight_exp`` (left when positive, arithmetic right when
  negative). An IR weight ``m * 2^e`` with ``|m| <= 127`` is therefore exact as ``weights =
  2m, weight_exp = e - 1``: even, so no truncated bit; at most 254, so no clipping, in every
  sign mode. The same rules are applied to convolutions (see ``lava_intfire/intfire.py``).
* thresholds (``lava/proc/lif/models.py``): ``vth`` is 17-bit unsigned, spike on ``v > vth << 6``.
* neuron bias: ``bias_mant`` 13-bit signed, used with ``bias_exp = 6`` (weight units).
* synaptic delay (``DelayDense``): 6 bits, 0..63 steps.
* input per step: LIF ``a_in`` and Dense ``a_out`` are declared 16-bit ports.
* messages: with ``num_message_bits = 0`` Dense and Conv read a spike as a bool (a -1 would
  count as +1); with more, they multiply the weight by the payload. Signed spikes (+1/-1)
  and the input therefore go as graded spikes.
"""

from __future__ import annotations

import numpy as np

from .limits import BIAS_MANT_BITS, MESSAGE_BITS, THRESHOLD_BITS, WEIGHT_MAX

WEIGHT_MANT_MAX = WEIGHT_MAX    # |mantissa| 127; 2m <= 254 fits every sign mode's clip
WEIGHT_EXP_MAX = 8              # IR exponent e: Lava weight_exp = e - 1 <= 7 (signed 4-bit)
VTH_MAX = 2 ** THRESHOLD_BITS - 1               # vth, 17-bit unsigned
BIAS_MANT_MAX = 2 ** (BIAS_MANT_BITS - 1) - 1   # 13-bit signed bias mantissa (bias_exp = 6)
DELAY_MAX = 63                  # DelayDense: 6-bit delays
PAYLOAD_MAX = 2 ** (MESSAGE_BITS - 1) - 1       # graded spikes (num_message_bits = 16)


class DoesNotFit(ValueError):
    """A value has no exact encoding in Lava's registers: ``value`` against ``limit``."""

    def __init__(self, what: str, value, limit):
        super().__init__(f"{what}: {value} (max {limit})")
        self.what, self.value, self.limit = what, value, limit


def weight_code(weight: np.ndarray) -> tuple[np.ndarray, int]:
    """The mantissa (int8 values) and IR exponent ``e`` of an integer weight array: the
    smallest ``e`` with ``|w| <= 127 * 2^e`` whose low ``e`` bits are all zero. Lava gets
    ``weights = 2 * mantissa, weight_exp = e - 1``."""
    w = np.asarray(weight)
    w = w if w.dtype.kind == "i" else w.astype(np.int64)  # no int64 copy of a 100M-weight layer
    top = max(int(w.max(initial=0)), -int(w.min(initial=0)))
    e = 0
    while top > WEIGHT_MANT_MAX << e:
        e += 1
    if e > WEIGHT_EXP_MAX:
        raise DoesNotFit("weight (|w|)", top, WEIGHT_MANT_MAX << WEIGHT_EXP_MAX)
    if e and np.any(w & ((1 << e) - 1)):
        odd = int(np.abs(w[(w & ((1 << e) - 1)) != 0]).max())
        raise DoesNotFit(f"weight (|w| = {top} needs exponent {e}; its low {e} bits are lost)",
                         odd, f"multiples of {1 << e}")
    return (w >> e).astype(np.int8), e


def lava_weights(mantissa: np.ndarray, exp: int) -> tuple[np.ndarray, int]:
    """What a Lava Dense/Conv takes for a weight code: (weights, weight_exp)."""
    return 2 * np.asarray(mantissa, np.int32), int(exp) - 1


def vth_code(theta: np.ndarray) -> np.ndarray:
    """``vth = theta - 1``: LIF spikes on ``v > vth << 6`` and ``v`` stays a multiple of 64,
    which is the IR's ``v >= theta``."""
    t = np.asarray(theta, np.int64)
    if t.size and int(t.max()) - 1 > VTH_MAX:
        raise DoesNotFit("threshold", int(t.max()), VTH_MAX + 1)
    if t.size and int(t.min()) < 1:
        raise DoesNotFit("threshold (at least 1)", int(t.min()), 1)
    return (t - 1).astype(np.int32)


def bias_fits_neuron(bias: np.ndarray) -> bool:
    """Whether a per-step bias fits the neuron's ``bias_mant`` (else it is sent as graded spikes)."""
    return int(np.abs(np.asarray(bias, np.int64)).max(initial=0)) <= BIAS_MANT_MAX


def bias_code(bias: np.ndarray) -> np.ndarray:
    """``bias_mant`` (with ``bias_exp = 6``, so the bias is in weight units)."""
    if not bias_fits_neuron(bias):
        raise DoesNotFit("neuron bias", int(np.abs(bias).max()), BIAS_MANT_MAX)
    return np.asarray(bias, np.int32)


def delay_code(delay: int) -> int:
    """The DelayDense delay (extra steps beyond the one every connection adds)."""
    if not 0 <= delay <= DELAY_MAX:
        raise DoesNotFit("synaptic delay (steps)", delay, DELAY_MAX)
    return int(delay)


def payload_code(values: np.ndarray) -> np.ndarray:
    """Graded-spike payloads (``num_message_bits = 16``)."""
    v = np.asarray(values, np.int64)
    if int(np.abs(v).max(initial=0)) > PAYLOAD_MAX:
        raise DoesNotFit(f"graded spike payload ({MESSAGE_BITS}-bit)", int(np.abs(v).max()), PAYLOAD_MAX)
    return v.astype(np.int32)


SPIKE_PAYLOADS = {"binary": (0, 1), "signed": (-1, 0, 1)}   # what an IF population sends


def message_bits(source: str) -> int:
    """``num_message_bits`` of a connection from ``source``: "input" (integer levels as
    graded spikes), or an IF population's spike kind ("binary": 0, a binary spike;
    "signed": its payloads -1 and +1 as graded spikes of the input's width)."""
    if source == "input":
        return MESSAGE_BITS
    if source not in SPIKE_PAYLOADS:
        raise DoesNotFit("spike kind", source, "/".join(SPIKE_PAYLOADS))
    if min(SPIKE_PAYLOADS[source]) >= 0:
        return 0
    payload_code(np.array(SPIKE_PAYLOADS[source]))  # +-1 fits any graded spike
    return MESSAGE_BITS
