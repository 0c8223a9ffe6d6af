"""Loihi 2 limits as data, with where each number comes from.

The numbers a user may want to change (a different chip budget, a stricter fan-in) are
backend options (``--target-option KEY=VALUE``); the ones that follow from the arithmetic of
Lava's bit-accurate models are fixed.
"""

from __future__ import annotations

from typing import Mapping

from snncompile.plugin import Limits, UsageError

LAVA_LIF = "lava-nc 0.10.0 lava/proc/lif/models.py (AbstractPyLifModelFixed, PyLifModelBitAcc)"
LAVA_DENSE = "lava-nc 0.10.0 lava/proc/dense/models.py + lava/utils/weightutils.py"
INTEL_LOIHI2 = ("Intel Loihi 2 brief (public): 128 neuro-cores/chip, up to ~1M neurons and "
                "~120M synapses per chip")

# Arithmetic of Lava's fixed-point models (not options).
WEIGHT_BITS = 8                 # signed mantissa; exact as weights=2w, weight_exp=-1
WEIGHT_MAX = 127                # |w|; -128 is not exact for an all-inhibitory matrix
STATE_BITS = 24                 # u and v registers
ACT_SHIFT = 6                   # synaptic input and threshold are << 6 (MSB alignment)
MEMBRANE_BITS = STATE_BITS - ACT_SHIFT          # 18: the IR width that v holds exactly
THRESHOLD_BITS = 17             # vth is 17-bit unsigned; theta = vth + 1 <= 2^17 - 1 here
BIAS_MANT_BITS = 13             # signed bias mantissa, used with bias_exp = 6
CURRENT_MAX = 2 ** 15 - 1       # |input per step|: LIF a_in / Dense a_out are 16-bit ports
MESSAGE_BITS = 16               # graded input spikes (num_message_bits)
SIGNED_STATE_BITS = 24          # a signed neuron's net count: one more state word (assumed)

# Capacity model (capacity.py). Each number is published (Intel, Lava, nengo-loihi), derived
# from published ones, or assumed; every one is a --target-option.
DEFAULTS = {"cores": 128, "chips": 1, "neurons_per_core": 8192, "memory_kib": 128,
            "neuron_bits": 48, "synapse_bits": 8, "axon_bits": 16,
            "synapses_per_core": 0, "in_axons_per_core": 0, "fan_in": 0,
            "maxpool_count_bits": 24}
MAXPOOL_COUNT_BITS_MAX = STATE_BITS   # a counter is one neuron state register (assumed)
# 0: follows from the others (synapses_per_core, in_axons_per_core) or none (fan_in)
DERIVED = {"synapses_per_core": "synapse_bits", "in_axons_per_core": "axon_bits"}

# Named systems: chips, and where the count is published.
SYSTEMS = {
    "chip": (1, "one Loihi 2 chip"),
    "oheo-gulch": (1, "Intel: Oheo Gulch, a single-chip Loihi 2 board"),
    "kapoho-point": (8, "Intel: Kapoho Point, an 8-chip Loihi 2 board"),
    "hala-point": (1152, "Intel (2024): Hala Point, 1,152 Loihi 2 chips"),
}

PUB, DER, ASM = "published", "derived", "assumed"
SOURCES = {
    "weight_bits": f"{LAVA_DENSE}: weights clipped to 8 bits, then low bits truncated",
    "membrane_bits": f"{LAVA_LIF}: 24-bit v, input and threshold << 6, so 18 bits in weight units",
    "threshold_bits": f"{LAVA_LIF}: vth unsigned 17-bit, spike when v > vth << 6",
    "cores": (f"{PUB}: 128 neuro-cores per chip ({INTEL_LOIHI2}; NUM_VIRTUAL_CORES_L2 = 128 in "
              "lava/magma/compiler/subcompilers/constants.py); option cores (per chip) x chips"),
    "chips": (f"{PUB}: chips of the named systems (option system=" + "/".join(SYSTEMS) +
              "; Oheo Gulch 1, Kapoho Point 8, Hala Point 1,152 per Intel); option chips"),
    "neurons_per_core": (f"{PUB}: 8,192 neurons per core (Intel: about 1M neurons per chip, "
                         "1,048,576 / 128 = 8,192; WikiChip); option neurons_per_core"),
    "memory_kib": (f"{PUB} (secondary): 128 KB of SRAM per core, flexibly partitioned between "
                   "synapses, neuron state and axon routing (Intel Loihi 2 launch material as "
                   "reported by the press); option memory_kib"),
    "neuron_bits": f"{DER}: 24-bit u + 24-bit v per neuron ({LAVA_LIF}); option neuron_bits",
    "synapse_bits": (f"{ASM}: 8 bits per stored weight (the 8-bit mantissa; no per-synapse index, "
                     "as in dense and convolutional synapse formats); option synapse_bits"),
    "axon_bits": (f"{ASM}: 16 bits per input axon table entry and per output axon entry "
                  "(one per neuron and layer it feeds); option axon_bits"),
    "synapses_per_core": (f"{DER}: memory_kib x 8192 / synapse_bits weights at most (120M "
                          "synapses per chip is an effective count with sharing, not storage); "
                          "option synapses_per_core"),
    "in_axons_per_core": (f"{DER}: memory_kib x 8192 / axon_bits at most (Loihi 1: 4,096, "
                          "nengo_loihi/block.py MAX_IN_AXONS); option in_axons_per_core"),
    "fan_in": (f"{ASM}: no per-neuron fan-in limit beyond core memory (Loihi 1's 4,096 input "
               "axons per core, nengo-loihi, is not a Loihi 2 figure); option fan_in sets one"),
    "weight_sharing": (f"{ASM}: a convolution's kernel is stored once per core and its input "
                       "arrives on one axon per source channel (Loihi 2's convolutional "
                       "connectivity); a sum pool before a weighted layer merges its window "
                       "onto one axon"),
    "delay_per_layer": ("lava-nc 0.10.0 Dense/Conv models send the previous step's buffer; skips "
                        "use DelayDense, 6-bit delays (0..63 steps)"),
    "bias": f"{LAVA_LIF}: bias_mant signed 13-bit, bias_exp 3-bit",
    "current": (f"{LAVA_LIF}: a_in is a 16-bit port (LavaPyType np.int16, precision=16), as is "
                f"Dense a_out ({LAVA_DENSE}); nengo-loihi's emulator wraps its synapse "
                "accumulator at Q_BITS = 21 plus sign, in the same << 6 units: 2^15 - 1 per step"),
    "input": "graded spikes of num_message_bits = 16 into a Dense (lava-nc Dense models)",
    "maxpool": (f"{ASM}: a spike-count max pool is a neuron program of our own (SpikeMaxPool, "
                "lava_intfire/intfire.py; Loihi 2 neurons are programmable): one compartment "
                "per window input, holding a spike counter, fed by one synapse of weight 1, "
                "and a running maximum per pool unit; state per pool unit (window + 1) x "
                "maxpool_count_bits, in place of neuron_bits per compartment"),
    "maxpool_count_bits": (f"{ASM}: 24-bit spike counters and running maxima, the width of a "
                           f"neuron state register ({LAVA_LIF}: u, v); a count up to T needs "
                           "T <= 2^bits - 1; option maxpool_count_bits (1..24)"),
    "spike_modes": ("binary: IntFire; signed: SignedIntFire (lava_intfire/intfire.py), +1/-1 as "
                    "graded spikes (num_message_bits = 16; lava-nc Dense/Conv multiply the weight by "
                    "the payload); on a chip both need a custom Loihi 2 neuron program (docs/loihi.md)"),
    "signed_state_bits": (f"{ASM}: a signed neuron keeps its net count as one more 24-bit state "
                          "word beside u and v (capacity.py counts neuron_bits + 24 for it)"),
}


def parse_options(options: Mapping[str, str]) -> dict[str, int]:
    """The integer chip options (see :data:`DEFAULTS`); ``system=NAME`` sets ``chips`` from
    :data:`SYSTEMS`. Options left at 0 in DEFAULTS follow from the others (or mean none)."""
    out = dict(DEFAULTS)
    for k, v in options.items():
        if k == "system":
            continue
        if k not in DEFAULTS:
            raise UsageError(f"unknown loihi target option '{k}'",
                             f"known options: {', '.join(sorted(list(DEFAULTS) + ['system']))}")
        try:
            out[k] = int(v)
        except ValueError:
            raise UsageError(f"loihi target option {k}={v!r} is not an integer",
                             f"e.g. --target-option {k}={DEFAULTS[k] or 1024}") from None
        if out[k] < (0 if k == "fan_in" else 1):
            raise UsageError(f"loihi target option {k} must be at least 1, got {out[k]}",
                             f"e.g. --target-option {k}={DEFAULTS[k] or 1024}")
    system = options.get("system")
    if system is not None:
        if system not in SYSTEMS:
            raise UsageError(f"unknown loihi system '{system}'",
                             f"known systems: {', '.join(SYSTEMS)}, or --target-option chips=N")
        if "chips" in options and out["chips"] != SYSTEMS[system][0]:
            raise UsageError(f"loihi target options system={system} ({SYSTEMS[system][0]} chips) "
                             f"and chips={out['chips']} disagree", "give one of them")
        out["chips"] = SYSTEMS[system][0]
    for k, per in DERIVED.items():
        if not out[k]:
            out[k] = out["memory_kib"] * 1024 * 8 // out[per]
    return out


def loihi_limits(options: Mapping[str, str]) -> Limits:
    """The Limits of the generic rules for Loihi 2 under ``options``."""
    o = parse_options(options)
    return Limits(weight_bits=WEIGHT_BITS, fan_in=o["fan_in"] or None,
                  neurons_per_core=o["neurons_per_core"],
                  synapses_per_core=o["synapses_per_core"], cores=o["cores"] * o["chips"],
                  membrane_bits=MEMBRANE_BITS, threshold_bits=THRESHOLD_BITS,
                  reset_modes=("subtract", "zero"), input_modes=("once", "every_step"),
                  spike_modes=("binary", "signed"),
                  delay_per_layer=1, sources=SOURCES)
