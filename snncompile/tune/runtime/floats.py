"""The CPU's floating-point mode while tuning: denormal floats flushed to zero."""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def denormals_flushed():
    """Flush denormal floats to zero on the CPU while tuning, then back to torch's default.

    Tuning starts from a trained network, so many samples' losses, and the gradients
    flowing back from them, are tiny from the first step and grow tinier as a stage trains:
    below 2^-126 they become denormal, which x86 CPUs compute tens of times slower, so a
    stage's epochs would grow slower as it trains. What is flushed is below 1.2e-38: the
    integer forward is untouched, and a gradient that small moves a parameter by less than
    1e-30 in a step of Adam (its epsilon is 1e-8)."""
    flushed = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if flushed:
            torch.set_flush_denormal(False)
