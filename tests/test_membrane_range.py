"""A threshold past its membrane (a neuron that can never fire) is refused by `convert` on
every target, before anything is written, with the width that fixes it; loading an artifact
refuses it by the same definition (snncompile.ir.membrane_overflows)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import bad_inputs as corpus
from snncompile.app.cli import main
from snncompile.errors import ArtifactError
from snncompile.ir.serialize import load_graph
from snncompile.targets.rules import LimitError

# the tiny model at 8-bit weights and 8-bit input levels: its IF layer's threshold is
# 9301 (7833 with NIR's v_init zero), far past an 8-bit membrane's 127, and fits 15 bits
PAST = ["--membrane-bits", "8", "--bits", "8", "--input-bits", "8"]


def convert(kit: corpus.Kit, target: str, *extra: str) -> tuple[int, str]:
    r = CliRunner().invoke(main, [*kit.convert(*extra), "--target", target])
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    return r.exit_code, r.output


@pytest.mark.parametrize("target", ["sim", "netlist", "cyclesim", "nir", "loihi"])
def test_convert_refuses_a_threshold_past_the_membrane(target, tmp_path):
    kit = corpus.Kit(tmp_path)
    code, out = convert(kit, target, *PAST)
    assert code == LimitError.exit_code, out
    assert "Traceback" not in out and sum("error:" in line for line in out.splitlines()) == 1, out
    assert "in its 8-bit membrane" in out and "exceeds max (127)" in out, out
    assert "fix: --membrane-bits 1" in out, out  # 15 (14 under NIR's zero initial membrane)
    assert not Path(kit.out).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no half-written output


def test_the_named_fix_converts_and_loads(tmp_path):
    kit = corpus.Kit(tmp_path)
    code, out = convert(kit, "sim", *PAST)
    need = out.split("fix: --membrane-bits ")[1].split(",")[0]
    code, out = convert(kit, "sim", *PAST[2:], "--membrane-bits", need)
    assert code == 0, out
    g = load_graph(kit.out)  # the artifact check passes: every threshold fits
    assert 127 < max(int(n.threshold.max()) for n in g.nodes if n.op == "if") < 2 ** (int(need) - 1)


def test_loihi_fits_its_input_levels_and_then_runs(tmp_path):
    """Without --input-bits, loihi's profile fits the input levels to its registers, which
    brings the threshold within the 8-bit membrane: accepted, and its artifact runs
    bit-exact against the reference simulator."""
    kit = corpus.Kit(tmp_path)
    code, out = convert(kit, "loihi", *PAST[:4])
    assert code == 0, out
    g = load_graph(kit.out)
    assert all(n.membrane_bits == 8 and int(n.threshold.max()) <= 127 for n in g.nodes if n.op == "if")
    r = CliRunner().invoke(main, ["run", kit.out, "--data", kit.data, "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["bit_exact"] is True


def test_loading_refuses_a_threshold_past_the_membrane(tmp_path):
    kit = corpus.Kit(tmp_path)
    assert convert(kit, "sim", *PAST[2:], "--membrane-bits", "15")[0] == 0
    arrays = dict(np.load(Path(kit.out) / "ir.npz"))
    key = next(k for k in arrays if k.endswith("/threshold"))
    arrays[key] = np.full_like(arrays[key], 2 ** 14)  # past a 15-bit membrane's 16383
    np.savez(Path(kit.out) / "ir.npz", **arrays)
    with pytest.raises(ArtifactError, match="beyond its 15-bit membrane"):
        load_graph(kit.out)


@pytest.mark.parametrize("target", ["sim", "netlist", "loihi"])
def test_inspect_and_convert_apply_the_same_fit(target, tmp_path):
    """The one list of violations that convert refuses and `inspect --target` reports
    (targets.select.fit_violations) holds a threshold past the membrane on any target."""
    from dataclasses import replace

    from snncompile.targets.select import fit_violations, resolve_target

    kit = corpus.Kit(tmp_path)
    assert convert(kit, "sim", *PAST[2:], "--membrane-bits", "15")[0] == 0
    g = load_graph(kit.out)
    assert not any("membrane" in str(v) for v in fit_violations(resolve_target(target, {}), g))
    narrowed = replace(g, nodes=[replace(n, membrane_bits=8) if n.op == "if" else n for n in g.nodes])
    found = fit_violations(resolve_target(target, {}), narrowed)
    assert any("in its 8-bit membrane" in str(v) for v in found), found
