"""`convert --help` lists every option under a section, one line each, and every option
belongs to a section (a new option cannot go ungrouped)."""

from __future__ import annotations

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


def test_convert_help_is_grouped_one_line_per_option():
    r = CliRunner().invoke(main, ["convert", "--help"], terminal_width=100)
    assert r.exit_code == 0, r.output
    heads = [ln[:-1] for ln in r.output.splitlines() if ln.endswith(":") and not ln.startswith(" ")]
    assert heads == SECTIONS and OTHER not in r.output
    listing = r.output.split(SECTIONS[0] + ":")[1]
    opt_lines = [ln for ln in listing.splitlines() if ln.startswith("  -")]
    options = [p for p in convert.params if isinstance(p, click.Option)]
    assert len(opt_lines) == len(options) + 1  # + --help: no option spills onto a second line
    assert all(len(ln) <= 100 for ln in opt_lines)
    section = r.output.split("Constraints and tuning:")[1].split("Target:")[0]
    assert "--fanin INTEGER" in section and "--bits INTEGER" in section and "--calib" not in section


def test_one_line_keeps_the_first_sentence_and_the_default():
    text = "Time window T: a spike count stands for it; 'auto' picks one.  [default: 16]"
    assert one_line(text, 200) == "Time window T: a spike count stands for it [default: 16]"
    short = one_line(text, 30)
    assert short.endswith("... [default: 16]") and len(short) <= 30
    assert one_line("A setting (repeatable), e.g. k=v.", 200) == "A setting (repeatable), e.g. k=v"


def test_an_ungrouped_option_is_still_listed():
    @click.command(cls=SectionedCommand, sections={"a": "First"})
    @click.option("--a")
    @click.option("--b", help="Be.")
    def cmd(a, b):
        pass

    assert cmd.ungrouped() == ["b"]
    out = CliRunner().invoke(cmd, ["--help"]).output
    assert "First:" in out and f"{OTHER}:" in out and "--b TEXT  Be" in out
