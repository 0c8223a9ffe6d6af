"""How to tune: the options every tuning method reads (:class:`TrainOptions`).

Kept apart from the methods themselves so that the scheduler (:mod:`.ptl`) and the
surrogate-gradient training (:mod:`.bptt`, :mod:`.ltl`, :mod:`.stdb`) can all read them
without importing one another.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..errors import UsageError
from .surrogate import Surrogate


@dataclass(frozen=True)
class TrainOptions:
    """How to tune (see the module docstring)."""

    epochs: int = 60
    patience: int = 6
    lr: float = 1e-3
    final_lr: float = 1e-4
    weight_decay: float = 1e-5
    batch_size: int = 64
    method: str = "ptl"
    seed: int = 0
    device: str = "cpu"
    recalibrate: bool = True       # re-derive a layer's threshold when it is converted
    # fan-in masks chosen on calibration inputs (matching pursuit) and their kept weights refitted
    # by least squares when imposed (see refit.py); off: by magnitude, weights as they were
    refit: bool = True
    gradual: bool = False          # fan-in masks halve the kept weights epoch by epoch (off: no gain seen)
    joint_final: bool = True       # PTL's last stage trains every layer (all spiking) at final_lr
    percentile: float = 99.9
    fit_thresholds: bool = True    # a re-derived threshold: the percentile's fraction fitted to T
    # non-empty: each layer's percentile is chosen from these on validation as it is converted
    percentile_search: tuple[float, ...] = ()
    # surrogate-gradient methods (ltl, stdb; see methods.py): None = the method's default
    surrogate: str | None = None   # exp (STDB) | linear
    surrogate_alpha: float | None = None
    surrogate_beta: float | None = None
    balance_scale: float | None = None  # stdb: thresholds x this after balancing
    # > 0: the training loss mixes in this share of distillation from the float ANN (its
    # outputs before tuning): KL at ``distill_temperature`` (classification) or MSE
    distill: float = 0.0
    distill_temperature: float = 4.0
    count_aware: bool = True       # hidden layers not spiking yet pass their count's value (see TandemNet)

    def check(self) -> None:
        if self.epochs < 0:
            raise UsageError(f"--epochs must be >= 0, got {self.epochs}")
        if self.patience < 1:
            raise UsageError(f"--patience must be >= 1, got {self.patience}")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be >= 1, got {self.batch_size}")
        bad = [p for p in self.percentile_search if not 0 < p <= 100]
        if bad:
            raise UsageError(f"percentile candidates must lie in (0, 100], got {bad[0]}")
        from .methods import check_request

        check_request(self.method, given={"surrogate": self.surrogate, "surrogate_alpha": self.surrogate_alpha,
                                          "surrogate_beta": self.surrogate_beta, "distill": self.distill or None,
                                          "balance_scale": self.balance_scale})
        if any(v is not None for v in (self.surrogate, self.surrogate_alpha, self.surrogate_beta)):
            surrogate_from(self, "exp")  # checks the values
        if not 0.0 <= self.distill <= 1.0:
            raise UsageError(f"--distill must lie in [0, 1], got {self.distill}")
        if not self.distill_temperature > 0:
            raise UsageError(f"--distill-temperature must be > 0, got {self.distill_temperature}")
        if self.balance_scale is not None and not self.balance_scale > 0:
            raise UsageError(f"--balance-scale must be > 0, got {self.balance_scale}")
        if self.device not in ("cpu", "cuda"):
            raise UsageError(f"unknown device '{self.device}'", "use cpu or cuda")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise UsageError("--device cuda was requested but no CUDA device is available",
                             "use --device cpu")


def surrogate_from(opts: TrainOptions, default_kind: str) -> Surrogate:
    """The surrogate ``opts`` asks for (unset fields: defaults)."""
    s = Surrogate(opts.surrogate or default_kind,
                  0.3 if opts.surrogate_alpha is None else float(opts.surrogate_alpha),
                  0.01 if opts.surrogate_beta is None else float(opts.surrogate_beta))
    s.check()
    return s


def fixed_thresholds(opts: TrainOptions) -> TrainOptions:
    """``opts`` with the per-stage threshold recalibration off: ltl and stdb set the
    thresholds themselves before training."""
    return dataclasses.replace(opts, recalibrate=False)
