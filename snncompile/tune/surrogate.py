"""Surrogate derivatives of a spike: what the surrogate-gradient methods (ltl, stdb) pass
back through a spiking neuron, whose true derivative is zero almost everywhere."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UsageError

SURROGATES = ("exp", "linear")


def stdb_grad(dt: torch.Tensor, alpha: float = 0.3, beta: float = 0.01) -> torch.Tensor:
    """Rathi et al.'s spike-time-dependent surrogate: ``alpha * exp(-beta * dt)``, with
    ``dt`` the steps since the neuron's last spike."""
    return alpha * torch.exp(-beta * dt)


def linear_grad(u: torch.Tensor, alpha: float = 0.3) -> torch.Tensor:
    """The linear (triangle) surrogate: ``alpha * max(0, 1 - |u - 1|)`` at normalized
    membrane ``u = v / theta``; largest at the threshold, zero at 0 and 2 thresholds."""
    return alpha * torch.clamp(1.0 - (u - 1.0).abs(), min=0.0)


@dataclass(frozen=True)
class Surrogate:
    """The derivative used for d spike / d (v / theta)."""

    kind: str = "exp"
    alpha: float = 0.3
    beta: float = 0.01

    def check(self) -> None:
        if self.kind not in SURROGATES:
            raise UsageError(f"unknown --surrogate '{self.kind}'", f"use one of {', '.join(SURROGATES)}")
        if not self.alpha > 0:
            raise UsageError(f"--surrogate-alpha must be > 0, got {self.alpha}")
        if self.beta < 0:
            raise UsageError(f"--surrogate-beta must be >= 0, got {self.beta}")

    def grad(self, u: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
        if self.kind == "exp":
            return stdb_grad(dt, self.alpha, self.beta)
        return linear_grad(u, self.alpha)
