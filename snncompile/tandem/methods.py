"""The tuning methods, by name: what ``convert --method NAME`` runs after conversion.

Every method takes the converted network (:class:`.model.TandemNet`), trains it under the
same --bits/--fanin constraints on the same data, and leaves it at its last stage, so the
same write-back pass (:mod:`.requant`) turns it into the same integer IR.

A method declares what it honours: ``stages`` (per-stage checkpoints, hence --resume can
continue an interrupted run), ``distributed`` (runs under torchrun) and the method options
it reads. :func:`check_request` refuses, before any work starts, an option the method
cannot honour, naming the option and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..errors import UsageError

# The CLI flag of each method option (fields of TrainOptions).
OPTION_FLAGS = {"surrogate": "--surrogate", "surrogate_alpha": "--surrogate-alpha",
                "surrogate_beta": "--surrogate-beta", "balance_scale": "--balance-scale"}


@dataclass(frozen=True)
class Method:
    """One tuning method and what it can honour."""

    name: str
    summary: str
    trainer: str                 # "module:function" under snncompile.tandem, imported on use
    stages: bool                 # several stages, each checkpointed: --resume continues
    distributed: bool            # tested under torchrun
    options: tuple[str, ...] = ()  # method options (TrainOptions fields) it reads
    why_not: str = ""            # why it has no surrogate/balancing options, for errors

    def train(self, *args: Any, **kw: Any):
        """Run the trainer: ``(net, train, val, opts, **tune keywords) -> TuneResult``."""
        import importlib

        mod, fn = self.trainer.split(":")
        f: Callable = getattr(importlib.import_module(f"snncompile.tandem.{mod}"), fn)
        return f(*args, **kw)


_STRAIGHT = "it trains with the tandem rule (straight-through count ~ activation), not a surrogate gradient"

METHODS: dict[str, Method] = {m.name: m for m in (
    Method("ptl", "progressive tandem learning (Wu et al., TPAMI 2021): layer by layer, adaptive schedule",
           "schedule:tune", stages=True, distributed=True, why_not=_STRAIGHT),
    Method("tandem", "tandem learning (Wu et al., TNNLS): all layers spiking from the start, one stage",
           "schedule:tune", stages=False, distributed=True, why_not=_STRAIGHT),
    Method("ltl", "local tandem learning, offline (Yang et al., NeurIPS 2022): per-layer teacher-student",
           "ltl:train_ltl", stages=False, distributed=False,
           options=("surrogate", "surrogate_alpha", "surrogate_beta")),
    Method("stdb", "threshold balancing, then spike-timing-dependent BPTT (Rathi et al., ICLR 2020)",
           "stdb:train_stdb", stages=False, distributed=False,
           options=("surrogate", "surrogate_alpha", "surrogate_beta", "balance_scale")),
)}

ALIASES = {"tl": "tandem"}  # the name this method had before the registry


def known() -> list[str]:
    """Every accepted --method value: the methods, their aliases, and ``none``."""
    return list(METHODS) + list(ALIASES) + ["none"]


def canonical(name: str) -> str:
    """The method's name, aliases resolved; UsageError listing the known names otherwise."""
    name = ALIASES.get(name, name)
    if name != "none" and name not in METHODS:
        raise UsageError(f"unknown --method '{name}'",
                         "use one of: " + ", ".join(f"{m} ({METHODS[m].summary})" for m in METHODS)
                         + "; tl is tandem's old name; none converts only")
    return name


def get_method(name: str) -> Method:
    """The registered method ``name`` (or an alias of it)."""
    name = canonical(name)
    if name == "none":
        raise UsageError("--method none converts only and has no trainer")
    return METHODS[name]


def check_request(name: str, resume: bool = False, world_size: int = 1,
                  given: dict[str, Any] | None = None) -> None:
    """Refuse options ``name`` cannot honour: --resume for a method without stages, a
    torchrun job for one not made for it, method options (``given``: TrainOptions field ->
    value, None when not given) it does not read."""
    m = get_method(name)
    if resume and not m.stages:
        raise UsageError(f"--resume cannot be honoured by --method {m.name}: it trains in one stage, "
                         "so an interrupted run leaves no finished stage to continue from",
                         "run the command again without --resume (with --force), or use --method ptl")
    if world_size > 1 and not m.distributed:
        raise UsageError(f"--method {m.name} does not run under torchrun (WORLD_SIZE={world_size}): its "
                         "per-batch losses were not made to be split across processes",
                         "run it as one process, or use --method ptl or tandem under torchrun")
    for field, value in (given or {}).items():
        if value is not None and field not in m.options:
            users = [k for k, v in METHODS.items() if field in v.options]
            why = m.why_not or f"it does not read {OPTION_FLAGS[field]}"
            raise UsageError(f"{OPTION_FLAGS[field]} cannot be honoured by --method {m.name}: {why}",
                             f"drop {OPTION_FLAGS[field]}, or use --method {' or '.join(users)}")
