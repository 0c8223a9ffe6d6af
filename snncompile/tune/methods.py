"""The tuning methods, by name: what ``convert --method NAME`` runs after conversion.

Every method takes the converted network (:class:`.model.TandemNet`), trains it under the
same --bits/--fanin constraints on the same data, and leaves it at its last stage, so the
same write-back pass (:mod:`..passes.requant`) turns it into the same integer IR.

A method declares what it cannot honour (``cannot``: option -> why), whether it runs under
torchrun (``distributed``) and its default surrogate gradient. :func:`review_options` reads
that table for the options the user set, before any work starts: an option marked
``refuse`` in :data:`OPTIONS` (it asks for behaviour the method does not have) is a
UsageError naming the option, the method and why; any other ignored option (it has nothing
to act on, so the run is what any value of it would give) is returned as a warning.
``none``, and any run without --train, is :data:`NONE`: conversion only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Mapping

from ..errors import UsageError


@dataclass(frozen=True)
class Option:
    """A convert option whose effect depends on the tuning method."""

    flag: str
    refuse: bool  # a method that cannot honour it refuses the run (else: warns, goes on)


OPTIONS: dict[str, Option] = {k: Option(*v) for k, v in {
    "resume": ("--resume", True), "surrogate": ("--surrogate", True),
    "surrogate_alpha": ("--surrogate-alpha", True), "surrogate_beta": ("--surrogate-beta", True),
    "balance_scale": ("--balance-scale", True),
    "prune_ahead": ("--prune-ahead", False), "fanin_mode": ("--fanin-mode", False),
    "percentile": ("--percentile", False), "percentile_search": ("--percentile auto", True),
    "epochs": ("--epochs", False),
    "patience": ("--patience", False), "batch_size": ("--batch-size", False),
    "device": ("--device", False), "joint_final": ("--joint-final", False),
    "count_aware": ("--count-aware", False), "fit_thresholds": ("--fit-thresholds", False),
    "distill": ("--distill", True), "distill_temperature": ("--distill-temperature", False),
}.items()}
OPTION_FLAGS = {k: o.flag for k, o in OPTIONS.items()}

_NEEDS_PERCENTILE_NORM = ("--norm percentile or channel (--norm max takes the maximum)",
                          lambda s: s.get("norm", "percentile") != "max")
# Options that act only together with another setting of the run, whatever the method:
# option -> (what it needs, whether the run's settings have it).
NEEDS: dict[str, tuple[str, Callable[[Mapping[str, Any]], bool]]] = {
    "prune_ahead": ("--fanin (no fan-in masks to impose without it)", lambda s: s.get("fanin") is not None),
    "fanin_mode": ("--fanin (no fan-in masks to choose without it)", lambda s: s.get("fanin") is not None),
    "percentile": _NEEDS_PERCENTILE_NORM,
    "percentile_search": _NEEDS_PERCENTILE_NORM,
    "distill_temperature": ("--distill above 0", lambda s: (s.get("distill") or 0) > 0),
}


@dataclass(frozen=True)
class Method:
    """One tuning method and what it cannot honour."""

    name: str
    summary: str
    trainer: str                 # "module:function" under snncompile.tune, imported on use
    distributed: bool            # tested under torchrun
    cannot: Mapping[str, str] = field(default_factory=dict)  # option (OPTIONS key) -> why not
    surrogate: str | None = None  # default surrogate gradient (surrogate.SURROGATES), if it has one

    def honours(self, option: str) -> bool:
        """Whether an explicit ``option`` (an :data:`OPTIONS` key) changes what this method does."""
        return option not in self.cannot

    def train(self, *args: Any, **kw: Any):
        """Run the trainer: ``(net, train, val, opts, **tune keywords) -> TuneResult``."""
        import importlib

        mod, fn = self.trainer.split(":")
        f: Callable = getattr(importlib.import_module(f"snncompile.tune.{mod}"), fn)
        return f(*args, **kw)


_STRAIGHT = "it trains with the tandem rule (straight-through count ~ activation), not a surrogate gradient"
_ONE_STAGE_RESUME = "it trains in one stage, so an interrupted run leaves no finished stage to continue from"
_ONE_STAGE_PRUNE = ("it trains in one stage with every fan-in mask imposed from the first epoch, so there "
                    "is no earlier stage to impose a mask in")
_NO_FINAL_STAGE = "it has no progressive stages, so no final stage that would otherwise train the output layer alone"
_NO_ANN_LAYERS = "every layer spikes from its first epoch, so no layer passes a modelled count"
_LTL_TEACHER = ("its only ANN stage fine-tunes the teacher under the fan-in masks, and the teacher's "
                "activations stay real-valued targets")
_OWN_LOSS = "it trains with its own loss ({}), which distillation does not enter"
_LTL_LOSS = _OWN_LOSS.format("per-layer matches to the ANN teacher, then cross-entropy")
_STDB_LOSS = _OWN_LOSS.format("BPTT through the spikes on the labels")
_PERCENTILE_BALANCE = ("threshold balancing sets every hidden threshold to --balance-scale x its layer's "
                       "largest activation, replacing the --percentile scales")


def _no_surrogate(why: str) -> dict[str, str]:
    return {"surrogate": why, "surrogate_alpha": why, "surrogate_beta": why}


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("ptl", "progressive tandem learning (Wu et al., TPAMI 2021): layer by layer, adaptive schedule",
           "ptl:tune", distributed=True,
           cannot={**_no_surrogate(_STRAIGHT),
                   "balance_scale": "it sets each threshold from --percentile when its layer starts spiking"}),
    Method("tandem", "tandem learning (Wu et al., TNNLS): all layers spiking from the start, one stage",
           "ptl:tune", distributed=True,
           cannot={**_no_surrogate(_STRAIGHT), "resume": _ONE_STAGE_RESUME, "prune_ahead": _ONE_STAGE_PRUNE,
                   "balance_scale": "it sets every threshold from --percentile",
                   "joint_final": "it trains every layer in its one stage already",
                   "count_aware": _NO_ANN_LAYERS}),
    Method("ltl", "local tandem learning, offline (Yang et al., NeurIPS 2022): per-layer teacher-student",
           "ltl:train_ltl", distributed=False, surrogate="linear",
           cannot={"resume": _ONE_STAGE_RESUME, "joint_final": _NO_FINAL_STAGE,
                   "count_aware": _LTL_TEACHER, "distill": _LTL_LOSS, "distill_temperature": _LTL_LOSS,
                   "balance_scale": "its thresholds are the teacher's --percentile scales, the scale of its targets",
                   "percentile_search": "its thresholds are the teacher's scales at one --percentile, the scale "
                                        "of its targets, set before any layer is trained",
                   "fit_thresholds": "its thresholds are the teacher's scales at one --percentile, the scale "
                                     "of its targets"}),
    Method("stdb", "threshold balancing, then spike-timing-dependent BPTT (Rathi et al., ICLR 2020)",
           "stdb:train_stdb", distributed=False, surrogate="exp",
           cannot={"resume": _ONE_STAGE_RESUME, "prune_ahead": _ONE_STAGE_PRUNE, "joint_final": _NO_FINAL_STAGE,
                   "count_aware": _NO_ANN_LAYERS, "distill": _STDB_LOSS, "distill_temperature": _STDB_LOSS,
                   "percentile": _PERCENTILE_BALANCE, "percentile_search": _PERCENTILE_BALANCE,
                   "fit_thresholds": _PERCENTILE_BALANCE}),
)}

_NOT_TRAINED = "it converts only, nothing is trained"
# --method none, and any run without --train: conversion (and --fanin pruning) only.
NONE = Method("none", "conversion only", "", distributed=False,
              cannot={k: _NOT_TRAINED for k in OPTIONS if k not in ("fanin_mode", "percentile")})

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


def review_options(name: str, given: Collection[str], training: bool = True,
                   settings: Mapping[str, Any] | None = None, world_size: int = 1) -> list[str]:
    """Check the options the user set (``given``: :data:`OPTIONS` keys) against method
    ``name`` before any work: raise UsageError for the first one it must refuse; return one
    warning for each one it ignores. ``training`` False (no --train) reviews against
    :data:`NONE`. ``settings`` holds the run's fanin, norm and surrogate (for
    :data:`NEEDS` and the surrogate's beta)."""
    settings = settings or {}
    name = canonical(name)
    m = METHODS[name] if training and name != "none" else NONE
    named = name == "none" or training
    by, under = (f"by --method {m.name}", f"with --method {m.name}") if named else ("without --train",) * 2
    if training and world_size > 1 and not m.distributed:
        raise UsageError(f"--method {m.name} does not run under torchrun (WORLD_SIZE={world_size}): its "
                         "per-batch losses were not made to be split across processes",
                         "run it as one process, or use --method ptl or tandem under torchrun")
    notes: list[str] = []
    for opt in [k for k in OPTIONS if k in given]:  # in table order, so messages are stable
        flag = OPTIONS[opt].flag
        if not m.honours(opt):
            why = m.cannot[opt]
            if OPTIONS[opt].refuse:
                users = [k for k, v in METHODS.items() if v.honours(opt)]
                fix = (f"drop {flag}, or pass --train and --val to tune" if not named
                       else f"drop {flag}, or use --method {' or '.join(users)}")
                raise UsageError(f"{flag} cannot be honoured {by}: {why}", fix)
            notes.append(f"{flag} has no effect {under}: {why}; it is ignored")
        elif opt == "surrogate_beta" and (settings.get("surrogate") or m.surrogate) == "linear":
            raise UsageError(f"--surrogate-beta cannot be honoured by --method {m.name} with the linear "
                             "surrogate" + (f" ({m.name}'s default)" if not settings.get("surrogate") else "")
                             + ": beta enters only the exp surrogate",
                             "add --surrogate exp, or drop --surrogate-beta")
        elif opt in NEEDS and not NEEDS[opt][1](settings):
            notes.append(f"{flag} has no effect without {NEEDS[opt][0]}; it is ignored")
    return notes


def check_request(name: str, resume: bool = False, world_size: int = 1,
                  given: dict[str, Any] | None = None) -> None:
    """Refuse what training with ``name`` cannot honour (for callers of the trainers):
    --resume, a torchrun job, method options (``given``: TrainOptions field -> value, None
    when not set). Warnings of :func:`review_options` are left to the caller that has them."""
    given = given or {}
    chosen = [k for k, v in given.items() if v is not None] + (["resume"] if resume else [])
    review_options(name, chosen, training=True, settings={"surrogate": given.get("surrogate")},
                   world_size=world_size)
