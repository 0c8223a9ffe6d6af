"""The choices of primitive conversion (see docs/semantics.md), as one typed value: the
conversion passes take it, and a converted graph carries the one it was made with
(``Graph.conversion``), so that re-deriving its integers after training (requantization)
repeats exactly those choices. `snncompile convert`'s options map onto its fields."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError
from .nodes import mode_errors

V_INIT_MODES = ("half", "zero")
WEIGHT_SCALES = ("channel", "layer")
MEMBRANE_BITS_RANGE = (8, 52)  # what --membrane-bits takes (the simulators' arithmetic is int64)


@dataclass(frozen=True)
class ConversionOptions:
    """Choices of the primitive conversion (see docs/semantics.md)."""

    timesteps: int = 16
    weight_bits: int = 16
    input_bits: int = 8
    input_mode: str = "every_step"  # "every_step" (TL); "once": all charge at t = 0 (PTL)
    reset: str = "subtract"
    v_init: str = "half"           # membrane starts at half the threshold: counts round, not floor
    membrane_bits: int = 32
    weight_exp: int = 0            # Loihi-style: weights = (weight_bits)-bit mantissa * 2^weight_exp
    spikes: str = "binary"         # "signed": a neuron can take a spike back (-1), see IFNode
    weight_scale: str = "layer"    # "channel": each output channel's weights span the full width

    def check(self) -> None:
        if self.timesteps < 1:
            raise UsageError(f"--timesteps must be at least 1, got {self.timesteps}")
        if not 2 <= self.weight_bits <= 24:
            raise UsageError(f"--bits must lie in 2..24, got {self.weight_bits}")
        if not 0 <= self.weight_exp <= 8 or self.weight_bits + self.weight_exp > 24:
            raise UsageError(f"--weight-exp must lie in 0..8 with --bits + --weight-exp <= 24, got "
                             f"{self.weight_exp} (with --bits {self.weight_bits})")
        if not 2 <= self.input_bits <= 24:
            raise UsageError(f"--input-bits must lie in 2..24, got {self.input_bits}")
        for problem, fix in mode_errors(input_mode=self.input_mode, reset=self.reset, spikes=self.spikes):
            raise UsageError(problem, fix)
        if self.weight_scale not in WEIGHT_SCALES:
            raise UsageError(f"--weight-scale must be one of {', '.join(WEIGHT_SCALES)}, got '{self.weight_scale}'")
        if self.v_init not in V_INIT_MODES:
            raise UsageError(f"v_init '{self.v_init}' not in {V_INIT_MODES}")
        if not MEMBRANE_BITS_RANGE[0] <= self.membrane_bits <= MEMBRANE_BITS_RANGE[1]:
            raise UsageError(f"membrane bits must lie in {MEMBRANE_BITS_RANGE[0]}..{MEMBRANE_BITS_RANGE[1]}, "
                             f"got {self.membrane_bits}")
        if self.reset == "zero" and self.input_mode == "once":
            raise UsageError("reset-to-zero neurons lose the charge an input injected once carries "
                             "beyond one threshold", "use --input-mode every_step with --reset zero")
