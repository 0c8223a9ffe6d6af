"""`convert --help` lists every option under a section, its first sentence wrapped to the
terminal's width, and every option belongs to a section (a new option cannot go ungrouped)."""

from __future__ import annotations

import re

import click
from click.testing import CliRunner

from snncompile.app.cli import convert, main
from snncompile.app.helpsections import CONVERT_SECTIONS, OTHER, SectionedCommand, one_line

SECTIONS = ["Input and calibration", "Conversion", "Constraints and tuning", "Target", "Output"]


def test_every_convert_option_has_a_section_and_every_section_entry_an_option():
    assert isinstance(convert, SectionedCommand)
    assert convert.ungrouped() == []
    names = {p.name for p in convert.params if isinstance(p, click.Option)} | {"help"}
    assert set(CONVERT_SECTIONS) == names  # no stale entries either
    assert list(dict.fromkeys(CONVERT_SECTIONS.values())) == SECTIONS


def _option_entries(listing: str) -> list[str]:
    """The option entries of a help listing, each with its wrapped lines joined."""
    entries: list[str] = []
    for ln in listing.splitlines():
        if ln.startswith("  -"):
            entries.append(ln.strip())
        elif ln.startswith("    ") and entries:
            entries[-1] += " " + ln.strip()
    return entries


def test_convert_help_is_grouped_one_entry_per_option():
    r = CliRunner().invoke(main, ["convert", "--help"], terminal_width=100)
    assert r.exit_code == 0, r.output
    heads = [ln[:-1] for ln in r.output.splitlines() if ln.endswith(":") and not ln.startswith(" ")]
    assert heads == SECTIONS and OTHER not in r.output
    listing = r.output.split(SECTIONS[0] + ":")[1]
    options = [p for p in convert.params if isinstance(p, click.Option)]
    assert len(_option_entries(listing)) == len(options) + 1  # + --help
    section = r.output.split("Constraints and tuning:")[1].split("Target:")[0]
    assert "--fanin INTEGER" in section and "--bits INTEGER" in section and "--calib" not in section


def test_convert_help_wraps_to_80_columns_without_cutting_words():
    r = CliRunner().invoke(main, ["convert", "--help"], terminal_width=80)
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert max(len(ln) for ln in lines) <= 80
    assert not re.search(r"[A-Za-z]\.\.\.", r.output)  # no word cut short
    entries = "".join(r.output.split(SECTIONS[0] + ":")[1].split())
    # each option's first sentence is there in full, across its wrapped lines (which may
    # break after a hyphen)
    for p in convert.params:
        if isinstance(p, click.Option) and p.help:
            assert "".join(one_line(p.help).split(" [")[0].split()) in entries, p.name


def test_one_line_keeps_the_first_sentence_and_the_default():
    text = "Time window T: a spike count stands for it; 'auto' picks one.  [default: 16]"
    assert one_line(text) == "Time window T: a spike count stands for it [default: 16]"
    assert one_line("A setting (repeatable), e.g. k=v.") == "A setting (repeatable), e.g. k=v"
    assert one_line("Stages ahead (0: when it spikes; 1: one before); more.") == \
        "Stages ahead (0: when it spikes; 1: one before)"


def test_an_ungrouped_option_is_still_listed():
    @click.command(cls=SectionedCommand, sections={"a": "First"})
    @click.option("--a")
    @click.option("--b", help="Be.")
    def cmd(a, b):
        pass

    assert cmd.ungrouped() == ["b"]
    out = CliRunner().invoke(cmd, ["--help"]).output
    assert "First:" in out and f"{OTHER}:" in out and "--b TEXT  Be" in out
