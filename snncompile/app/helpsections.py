"""Grouped `--help`: a command's options listed under sections, each option's first sentence.

`convert` takes some fifty options; listed in declaration order, with their full help texts
wrapped over several lines, they read as a wall. :class:`SectionedCommand` lists them under
the sections a user thinks in, each with the first sentence of its help only (the user
guide, docs/user-guide.md, explains each option in full), wrapped by click to the terminal's
width (never cut mid-word). The sections are data
(:data:`CONVERT_SECTIONS`), kept apart from the option declarations so that those stay where
they are; an option missing from the map is still listed, under "other options", and
tests/test_help.py fails on it.
"""

from __future__ import annotations

import re
from typing import Mapping

import click

# option (its Python name) -> section of `snncompile convert --help`, in the order shown
CONVERT_SECTIONS: dict[str, str] = {
    # input and calibration
    "output_name": "Input and calibration",
    "calib": "Input and calibration",
    "norm": "Input and calibration",
    "percentile": "Input and calibration",
    "input_bits": "Input and calibration",
    "input_mode": "Input and calibration",
    # conversion
    "timesteps": "Conversion",
    "max_accuracy_drop": "Conversion",
    "max_psnr_drop": "Conversion",
    "timesteps_candidates": "Conversion",
    "weight_exp": "Conversion",
    "weight_scale": "Conversion",
    "reset": "Conversion",
    "spikes": "Conversion",
    "v_init": "Conversion",
    "membrane_bits": "Conversion",
    "calibrate_bias": "Conversion",
    "maxpool": "Conversion",
    # constraints and tuning
    "weight_bits": "Constraints and tuning",
    "fanin": "Constraints and tuning",
    "fanin_mode": "Constraints and tuning",
    "prune_ahead": "Constraints and tuning",
    "train_path": "Constraints and tuning",
    "val_path": "Constraints and tuning",
    "method": "Constraints and tuning",
    "epochs": "Constraints and tuning",
    "patience": "Constraints and tuning",
    "batch_size": "Constraints and tuning",
    "joint_final": "Constraints and tuning",
    "count_aware": "Constraints and tuning",
    "fit_thresholds": "Constraints and tuning",
    "distill": "Constraints and tuning",
    "distill_temperature": "Constraints and tuning",
    "surrogate": "Constraints and tuning",
    "surrogate_alpha": "Constraints and tuning",
    "surrogate_beta": "Constraints and tuning",
    "balance_scale": "Constraints and tuning",
    "device": "Constraints and tuning",
    "resume": "Constraints and tuning",
    # target
    "target": "Target",
    "target_options": "Target",
    # output
    "out": "Output",
    "force": "Output",
    "seed": "Output",
    "as_json": "Output",
    "quiet": "Output",
    "help": "Output",
}

OTHER = "Other options"
COL_MAX = 34
_DEFAULT = re.compile(r"\s*(\[[^\[\]]*\])\s*$")


def one_line(help_text: str) -> str:
    """The first sentence of an option's help and its ``[default: ...]`` tag; click's
    formatter wraps it to the terminal's width."""
    m = _DEFAULT.search(help_text)
    tag = m.group(1) if m else ""
    body = " ".join((help_text[:m.start()] if m else help_text).split())
    return f"{_first_sentence(body)} {tag}".strip()


def _first_sentence(text: str) -> str:
    """``text`` up to its first "; " or ". X" outside parentheses, without a final period."""
    depth = 0
    for m in re.finditer(r"[()]|;\s|\.\s(?=[A-Z])", text):
        tok = m.group()
        if tok in "()":
            depth = max(depth + (1 if tok == "(" else -1), 0)
        elif depth == 0:
            return text[:m.start()].rstrip(".")
    return text.rstrip(".")


class SectionedCommand(click.Command):
    """A click command whose `--help` groups options by ``sections`` (option name ->
    section title; sections appear in the order first named), one line per option."""

    def __init__(self, *args, sections: Mapping[str, str] = CONVERT_SECTIONS, **kwargs):
        kwargs.setdefault("context_settings", {}).setdefault("max_content_width", 120)
        super().__init__(*args, **kwargs)
        self.sections = dict(sections)

    def ungrouped(self) -> list[str]:
        """Options that no section names (there should be none)."""
        return [p.name for p in self.params if isinstance(p, click.Option) and p.name not in self.sections]

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        help_option = self.get_help_option(ctx)
        groups: dict[str, list[tuple[str, str]]] = {s: [] for s in dict.fromkeys(self.sections.values())}
        for param in self.get_params(ctx):
            rec = param.get_help_record(ctx)
            if rec is None or isinstance(param, click.Argument):
                continue
            name = "help" if param is help_option else param.name
            groups.setdefault(self.sections.get(name, OTHER), []).append(rec)
        for title, items in groups.items():
            if items:
                with formatter.section(title):
                    formatter.write_dl([(opts, one_line(text)) for opts, text in items], col_max=COL_MAX)
