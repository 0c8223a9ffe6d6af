"""Target profiles: the conversion settings a backend needs or prefers, and how `convert
--target X` applies them to the options the user left at their defaults.

A backend declares a :class:`Profile` (:meth:`snncompile.targets.api.Backend.profile`; by
default one derived from its :class:`~snncompile.targets.rules.Limits`). Its fixed settings
(weight and membrane width, input mode, reset, initial membrane, spike kind) replace the
defaults of every option the user did not set (:func:`apply_profile`); an option set
explicitly is never overridden, so a conflict stays a limit violation with its fix. The
input width depends on the model's weights, so a profile may name an ``input_rule`` (the
violations a narrower input fixes): :func:`fit_input_bits` then picks the largest width up
to the default whose converted graph passes it; where none does, the target's check
refuses the graph naming layer, quantity and fix, and the profile's line says that no
input width was enough. :class:`ProfileChoice` is what was chosen and why: one line for the user, one
record in compile.json.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ..calibrate.statistics import Calibration
from ..ir import Graph
from ..ir.structure import ancestors, fanin_layers, is_population, sourced_chains
from ..ir.options import ConversionOptions
from ..passes.constrain import constrain
from ..passes.convert import convert
from ..progress import progress_bar
from .rules import Limits, Violation

# Profile setting -> the `convert` option it stands for (a ConversionOptions field each).
OPTION_FLAGS: dict[str, str] = {"weight_bits": "--bits", "membrane_bits": "--membrane-bits",
                                "input_mode": "--input-mode", "reset": "--reset",
                                "v_init": "--v-init", "spikes": "--spikes",
                                "input_bits": "--input-bits"}
FIXED = ("weight_bits", "membrane_bits", "input_mode", "reset", "v_init", "spikes")

InputRule = Callable[[Graph], "list[Violation]"]


@dataclass(frozen=True)
class Profile:
    """The conversion settings a target needs or prefers. ``None``: no preference (the
    option keeps its default). ``reasons`` says, per setting, why (one short phrase, shown
    to the user). ``input_rule``, where given, returns the violations of a converted graph
    that fewer ``--input-bits`` can fix (e.g. a per-step current register): the core then
    chooses the largest input width from the default down to ``min_input_bits`` that
    passes it. The rule may look only at the input and the layers it feeds directly (and
    at the ops between them): it is given the conversion of that part of the network alone
    (:func:`input_subgraph`, those layers as its outputs), so that fitting costs one small
    conversion per width at any network size."""

    weight_bits: int | None = None
    membrane_bits: int | None = None
    input_mode: str | None = None
    reset: str | None = None
    v_init: str | None = None
    spikes: str | None = None
    reasons: Mapping[str, str] = field(default_factory=dict)
    input_rule: InputRule | None = None
    input_reason: str = ""
    min_input_bits: int = 2

    def settings(self) -> dict[str, Any]:
        """The fixed settings the profile makes (option name -> value)."""
        return {k: getattr(self, k) for k in FIXED if getattr(self, k) is not None}

    @classmethod
    def from_limits(cls, limits: Limits, defaults: ConversionOptions = ConversionOptions()) -> "Profile":
        """The profile that the generic limits imply: a width no larger than the limit,
        and the first allowed mode where the default is not allowed."""
        kw: dict[str, Any] = {}
        reasons: dict[str, str] = {}
        for k, lim in (("weight_bits", limits.weight_bits), ("membrane_bits", limits.membrane_bits)):
            if lim is not None and lim < getattr(defaults, k):
                kw[k], reasons[k] = lim, f"the target holds at most {lim} bits"
        for k, modes in (("input_mode", limits.input_modes), ("reset", limits.reset_modes),
                         ("spikes", limits.spike_modes)):
            if modes and getattr(defaults, k) not in modes:
                kw[k], reasons[k] = modes[0], f"the target supports {'/'.join(modes)}"
        return cls(reasons=reasons, **kw)


@dataclass
class ProfileChoice:
    """What a profile chose for one conversion: ``chosen`` the options it set (name ->
    value), ``kept`` the options the user set that the profile would have set otherwise
    (name -> (user's value, profile's value)), ``reasons`` why."""

    target: str
    chosen: dict[str, Any] = field(default_factory=dict)
    kept: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    note: str = ""           # what the profile could not choose (e.g. no input width fits)

    def line(self) -> str:
        """The one line `convert` prints."""
        if not self.chosen and not self.kept and not self.note:
            return f"target {self.target}: the default conversion options fit, none changed"
        parts = [f"{OPTION_FLAGS[k]} {v} ({self.reasons.get(k, 'target profile')})"
                 for k, v in self.chosen.items()]
        text = f"target {self.target} profile chose " + "; ".join(parts) if parts \
            else f"target {self.target} profile changed nothing"
        if self.kept:
            text += "; kept as given: " + ", ".join(f"{OPTION_FLAGS[k]} {u} (profile: {p})"
                                                    for k, (u, p) in self.kept.items())
        return text + (f"; {self.note}" if self.note else "")

    def as_dict(self) -> dict[str, Any]:
        """What compile.json records."""
        return {"target": self.target, "chosen": dict(self.chosen), "reasons": dict(self.reasons),
                "kept_explicit": {k: {"given": u, "profile": p} for k, (u, p) in self.kept.items()},
                "note": self.note, "line": self.line()}


def explicit_options(opts: ConversionOptions, explicit: frozenset[str] | None) -> set[str]:
    """The conversion options the user set: ``explicit`` where the caller knows (the CLI's
    command line), else those whose value differs from the default."""
    if explicit is not None:
        return set(explicit) & set(OPTION_FLAGS)
    base = ConversionOptions()
    return {k for k in OPTION_FLAGS if getattr(opts, k) != getattr(base, k)}


def apply_profile(profile: Profile, opts: ConversionOptions, given: set[str],
                  target: str) -> tuple[ConversionOptions, ProfileChoice]:
    """``opts`` with the profile's fixed settings on every option not in ``given``."""
    choice = ProfileChoice(target)
    changes: dict[str, Any] = {}
    for k, v in profile.settings().items():
        if k in given:
            if getattr(opts, k) != v:
                choice.kept[k] = (getattr(opts, k), v)
            continue
        if getattr(opts, k) != v:
            changes[k] = v
            choice.chosen[k] = v
            choice.reasons[k] = profile.reasons.get(k, "target profile")
    if (changes.get("reset") == "zero" and "input_mode" not in given
            and changes.get("input_mode", opts.input_mode) == "once"):
        changes["input_mode"] = choice.chosen["input_mode"] = "every_step"  # the only pairing that works
        choice.reasons["input_mode"] = "reset-to-zero neurons need the input every step"
    return dataclasses.replace(opts, **changes), choice


def fit_input_bits(profile: Profile, build: Callable[[int], Graph], default: int,
                   choice: ProfileChoice) -> int:
    """The largest input width from ``default`` down to the profile's minimum whose graph
    (``build(bits)``: converted and constrained as it will be checked) passes the profile's
    ``input_rule``; ``default`` when there is no rule, when it already passes, or when no
    width does (``choice.note`` then says so, and the target's check reports the layer)."""
    if profile.input_rule is None or not profile.input_rule(build(default)):
        return default
    low = min(max(profile.min_input_bits, 2), default)
    if low == default or profile.input_rule(build(low)):
        choice.note = (f"no --input-bits from {default} down to {low} keeps the input's current "
                       "within the target: fewer --bits or a smaller --fanin may")
        return default
    bits = next((b for b in range(default - 1, low, -1) if not profile.input_rule(build(b))), low)
    choice.chosen["input_bits"] = bits
    choice.reasons["input_bits"] = (profile.input_reason or "the input's per-step current fits the target")
    return bits


def input_subgraph(ann: Graph) -> Graph:
    """The part of ``ann`` that the input width decides: the input, the layers it feeds
    directly (through synapse chains without another population), as the outputs, and
    every node they read. Converting it gives those layers exactly what converting the
    whole network gives them, since conversion derives a node from the nodes before it and,
    for an op, from its consumers (an add's shared scale): where an op kept here has a
    consumer that is not, the whole graph is returned instead."""
    src = ann.input.name
    fed = [n for n in fanin_layers(ann) if any(s == src for s, _ in sourced_chains(ann, n))]
    keep = ancestors(ann, fed)
    readers: dict[str, list[str]] = {}
    for n in ann.nodes:
        for i in n.inputs:
            readers.setdefault(i, []).append(n.name)
    if any(not is_population(ann[k]) and any(r not in keep for r in readers.get(k, ()))
           for k in keep):
        return ann
    return Graph([n for n in ann.nodes if n.name in keep], [n for n in fed], ann.timesteps,
                 dict(ann.meta), ann.conversion)


def fit_input_width(profile: Profile, choice: ProfileChoice, ann: Graph, calib: Calibration,
                    opts: ConversionOptions, given: set[str], fanin: int | None = None,
                    fanin_mode: str = "magnitude", progress: bool = False) -> ConversionOptions:
    """``opts`` with the input width the profile fits to this model (:func:`fit_input_bits`
    on the graph converted, and constrained to ``fanin``, as it will be checked); unchanged
    when the user set --input-bits. Each width converts only :func:`input_subgraph` (what
    the profile's rule may look at). ``progress``: a bar on stderr, one step per width tried."""
    if "input_bits" in given:
        return opts
    bar = progress_bar(progress, None, "fitting --input-bits", "width")
    part = input_subgraph(ann)

    def build(bits: int) -> Graph:
        g = convert(part, calib, dataclasses.replace(opts, input_bits=bits))
        g = constrain(g, opts.weight_bits, fanin, fanin_mode) if fanin else g
        bar.update(1)
        return g

    with bar:
        bits = fit_input_bits(profile, build, opts.input_bits, choice)
    return dataclasses.replace(opts, input_bits=bits)
