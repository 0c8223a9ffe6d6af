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
CURRENT_MAX = 2 ** (STATE_BITS - 1 - ACT_SHIFT) - 1   # |input per step| before u wraps
MESSAGE_BITS = 16               # graded input spikes (num_message_bits)

DEFAULTS = {"cores": 128, "neurons_per_core": 8192, "synapses_per_core": 120_000_000 // 128,
            "fan_in": 4096}

SOURCES = {
    "weight_bits": f"{LAVA_DENSE}: weights clipped to 8 bits, then low bits truncated",
    "membrane_bits": f"{LAVA_LIF}: 24-bit v, input and threshold << 6, so 18 bits in weight units",
    "threshold_bits": f"{LAVA_LIF}: vth unsigned 17-bit, spike when v > vth << 6",
    "cores": f"{INTEL_LOIHI2}; also NUM_VIRTUAL_CORES_L2 = 128 in lava/magma/compiler/subcompilers/constants.py",
    "neurons_per_core": f"{INTEL_LOIHI2}: 1M / 128 = about 8k (option neurons_per_core)",
    "synapses_per_core": f"{INTEL_LOIHI2}: 120M / 128 (option synapses_per_core)",
    "fan_in": ("not published for Loihi 2 in lava-nc; default 4096 = Loihi 1 input axons per "
               "core as nengo-loihi enforces it (option fan_in)"),
    "delay_per_layer": ("lava-nc 0.10.0 Dense/Conv models send the previous step's buffer; skips "
                        "use DelayDense, 6-bit delays (0..63 steps)"),
    "bias": f"{LAVA_LIF}: bias_mant signed 13-bit, bias_exp 3-bit",
    "current": f"{LAVA_LIF}: u = decay(u) + (a_in << 6) wraps at 24 bits",
    "input": "graded spikes of num_message_bits = 16 into a Dense (lava-nc Dense models)",
}


def parse_options(options: Mapping[str, str]) -> dict[str, int]:
    """The integer chip options (cores, neurons_per_core, synapses_per_core, fan_in)."""
    out = dict(DEFAULTS)
    for k, v in options.items():
        if k not in DEFAULTS:
            raise UsageError(f"unknown loihi target option '{k}'",
                             f"known options: {', '.join(sorted(DEFAULTS))}")
        try:
            out[k] = int(v)
        except ValueError:
            raise UsageError(f"loihi target option {k}={v!r} is not an integer",
                             f"e.g. --target-option {k}={DEFAULTS[k]}") from None
        if out[k] < 1:
            raise UsageError(f"loihi target option {k} must be at least 1, got {out[k]}",
                             f"e.g. --target-option {k}={DEFAULTS[k]}")
    return out


def loihi_limits(options: Mapping[str, str]) -> Limits:
    """The Limits of the generic rules for Loihi 2 under ``options``."""
    o = parse_options(options)
    return Limits(weight_bits=WEIGHT_BITS, fan_in=o["fan_in"], neurons_per_core=o["neurons_per_core"],
                  synapses_per_core=o["synapses_per_core"], cores=o["cores"],
                  membrane_bits=MEMBRANE_BITS, threshold_bits=THRESHOLD_BITS,
                  reset_modes=("subtract", "zero"), input_modes=("once", "every_step"),
                  delay_per_layer=1, sources=SOURCES)
