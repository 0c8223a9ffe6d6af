"""The headline command as typed: target profiles choose the conversion options the user did
not set (and never the ones they did), -o defaults beside the model, and without --calib the
thresholds come from BatchNorm statistics where the model has them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper

from snncompile.app.cli import main
from snncompile.calibrate.bn_stats import bn_scales, data_free_scales
from snncompile.calibrate.statistics import weight_bounds
from snncompile.frontend import import_onnx
from snncompile.ir.options import ConversionOptions
from snncompile.targets.profile import Profile, ProfileChoice, apply_profile, fit_input_bits
from snncompile.targets.rules import Limits


def cli(*args: str) -> subprocess.CompletedProcess:
    r = CliRunner().invoke(main, [str(a) for a in args])
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return subprocess.CompletedProcess(args, r.exit_code, r.stdout, r.stderr)


def _dense_model(onnx_kit, w1: np.ndarray, n_in: int) -> onnx.ModelProto:
    """x (n_in) -> Gemm(w1) -> Relu -> Gemm -> y (3 classes)."""
    hidden = w1.shape[0]
    w2 = np.random.default_rng(1).normal(0, 0.5, (3, hidden)).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], transB=1)]
    return onnx_kit.model(nodes, {"w1": w1.astype(np.float32), "b1": np.zeros(hidden, np.float32),
                                  "w2": w2, "b2": np.zeros(3, np.float32)}, in_shape=(n_in,))


@pytest.fixture
def small(onnx_kit, tmp_path) -> Path:
    w1 = np.random.default_rng(0).normal(0, 0.3, (6, 16)).astype(np.float32)
    path = tmp_path / "net.onnx"
    onnx.save(_dense_model(onnx_kit, w1, 16), path)
    return path


def _bn_model(onnx_kit, gamma, beta) -> onnx.ModelProto:
    """x (1x4x4) -> Conv 3x3 (2 ch) -> BatchNorm -> Relu -> Flatten -> Gemm -> y."""
    rng = np.random.default_rng(2)
    nodes = [helper.make_node("Conv", ["x", "w", "cb"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["bn"]),
             helper.make_node("Relu", ["bn"], ["r"]), helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("Gemm", ["f", "w2", "b2"], ["y"], transB=1)]
    inits = {"w": rng.normal(0, 0.5, (2, 1, 3, 3)).astype(np.float32), "cb": np.zeros(2, np.float32),
             "g": np.asarray(gamma, np.float32), "b": np.asarray(beta, np.float32),
             "m": np.asarray([0.1, -0.2], np.float32), "v": np.asarray([0.5, 2.0], np.float32),
             "w2": rng.normal(0, 0.5, (3, 32)).astype(np.float32), "b2": np.zeros(3, np.float32)}
    return onnx_kit.model(nodes, inits, in_shape=(1, 4, 4))


# --- the profile API ---------------------------------------------------------------------------

def test_profile_from_limits_chooses_only_what_the_defaults_break():
    p = Profile.from_limits(Limits(weight_bits=8, membrane_bits=40, input_modes=("once",),
                                   spike_modes=("binary", "signed")))
    assert p.settings() == {"weight_bits": 8, "input_mode": "once"}
    # a mode the default already meets is not chosen
    assert Profile.from_limits(Limits(input_modes=("every_step",))).settings() == {}
    assert Profile.from_limits(Limits()).settings() == {}


def test_apply_profile_never_overrides_an_explicit_option():
    prof = Profile(weight_bits=8, membrane_bits=18, input_mode="once", reasons={"weight_bits": "w8"})
    opts = ConversionOptions(membrane_bits=20)
    new, choice = apply_profile(prof, opts, {"membrane_bits"}, "t")
    assert (new.weight_bits, new.membrane_bits, new.input_mode) == (8, 20, "once")
    assert choice.chosen == {"weight_bits": 8, "input_mode": "once"}
    assert choice.kept == {"membrane_bits": (20, 18)}
    assert "--bits 8 (w8)" in choice.line() and "kept as given: --membrane-bits 20 (profile: 18)" in choice.line()


def test_fit_input_bits_takes_the_widest_width_that_passes():
    prof = Profile(input_rule=lambda bits: ["too wide"] if bits > 5 else [], min_input_bits=3)
    choice = ProfileChoice("t")
    assert fit_input_bits(prof, lambda b: b, 8, choice) == 5
    assert choice.chosen == {"input_bits": 5}
    never = Profile(input_rule=lambda bits: ["always"])
    choice = ProfileChoice("t")
    assert fit_input_bits(never, lambda b: b, 8, choice) == 8  # the target's check then refuses
    assert "no --input-bits from 8 down to 2" in choice.note and choice.note in choice.line()


# --- convert --target as typed -----------------------------------------------------------------

def test_profile_chosen_printed_recorded_and_out_defaults_beside_the_model(small):
    r = cli("convert", small, "--target", "cyclesim")
    assert r.returncode == 0, r.stderr
    out = small.with_name("net.cyclesim")
    assert "target cyclesim profile chose --bits 8" in r.stdout and "--membrane-bits 24" in r.stdout
    assert f"wrote {out}" in r.stdout
    info = json.loads((out / "compile.json").read_text())
    assert info["profile"]["chosen"] == {"weight_bits": 8, "membrane_bits": 24}
    assert info["options"]["weight_bits"] == 8 and info["options"]["membrane_bits"] == 24
    again = cli("convert", small, "--target", "cyclesim")  # the default path obeys the -o rule
    assert again.returncode == 2 and "already exists" in again.stderr and "--force" in again.stderr
    assert cli("convert", small, "--target", "cyclesim", "--force").returncode == 0
    assert cli("convert", small).returncode == 0 and small.with_name("net.snn").is_dir()


def test_explicit_option_is_kept_and_a_conflict_is_a_violation(small, tmp_path):
    r = cli("convert", small, "--target", "cyclesim", "--membrane-bits", "20", "-o", tmp_path / "a")
    assert r.returncode == 0, r.stderr
    info = json.loads((tmp_path / "a" / "compile.json").read_text())
    assert info["options"]["membrane_bits"] == 20 and "membrane_bits" not in info["profile"]["chosen"]
    r = cli("convert", small, "--target", "cyclesim", "--bits", "16", "-o", tmp_path / "b")
    assert r.returncode == 6 and "weight bits (16) exceeds max (8); fix: --bits 8" in r.stderr
    assert "kept as given: --bits 16 (profile: 8)" in r.stderr and not (tmp_path / "b").exists()


def test_loihi_profile_fits_the_input_width_to_the_first_layers_current(onnx_kit, tmp_path):
    # 64 equal weights per neuron: 8-bit weights of 127 each, so |current| = 64 * 127 * q must
    # stay <= 2^15 - 1 (the 16-bit input port): q <= 4, the widest --input-bits is 3 (q = 3)
    path = tmp_path / "flat.onnx"
    onnx.save(_dense_model(onnx_kit, np.ones((4, 64), np.float32), 64), path)
    r = cli("convert", path, "--target", "loihi")
    assert r.returncode == 0, r.stderr
    info = json.loads((tmp_path / "flat.loihi" / "compile.json").read_text())
    assert info["options"]["input_bits"] == 3 and info["profile"]["chosen"]["input_bits"] == 3
    assert info["options"]["input_mode"] == "every_step" and info["options"]["membrane_bits"] == 18
    # given explicitly, the width is kept and refused with the register named
    r = cli("convert", path, "--target", "loihi", "--input-bits", "6", "-o", tmp_path / "six")
    assert r.returncode == 6 and "input current per step (16-bit a_in port)" in r.stderr
    # no width is enough: the layer, the quantity and what helps
    wide = tmp_path / "wide.onnx"
    onnx.save(_dense_model(onnx_kit, np.ones((2, 2048), np.float32), 2048), wide)
    r = cli("convert", wide, "--target", "loihi")
    assert r.returncode == 6 and "layer 'r': input current per step" in r.stderr
    assert "no --input-bits from 8 down to 2" in r.stderr and "--fanin" in r.stderr


def test_fitting_the_input_width_shows_a_bar_where_asked(onnx_kit, capsys):
    """Each width tried converts the layers the input feeds: the profile stage draws its
    bar when progress is on, nothing when it is off."""
    from snncompile.calibrate.statistics import weight_bounds
    from snncompile.frontend import import_onnx
    from snncompile.ir.options import ConversionOptions
    from snncompile.plugin import get_backend
    from snncompile.targets.profile import apply_profile, fit_input_width

    ann = import_onnx(_dense_model(onnx_kit, np.ones((4, 64), np.float32), 64)).graph
    prof = get_backend("loihi").profile()
    for progress in (True, False):
        opts, choice = apply_profile(prof, ConversionOptions(), set(), "loihi")
        opts = fit_input_width(prof, choice, ann, weight_bounds(ann, warn=False), opts, set(),
                               progress=progress)
        assert opts.input_bits == 3
        err = capsys.readouterr().err
        assert ("fitting --input-bits" in err) is progress


def test_nir_profile_and_inspect_target(small):
    r = cli("convert", small, "--target", "nir")
    assert r.returncode == 0, r.stderr
    assert "--v-init zero" in r.stdout
    r = cli("inspect", small, "--target", "loihi", "--json")
    assert r.returncode == 0, r.stderr
    t = json.loads(r.stdout)["target"]
    assert t["profile"]["chosen"]["weight_bits"] == 8 and t["violations"] == []
    r = cli("inspect", small, "--target", "loihi", "--bits", "16")
    assert "kept as given: --bits 16" in r.stdout and "violation: layer" in r.stdout


# --- thresholds without --calib ----------------------------------------------------------------

def test_bn_statistics_give_the_thresholds_and_the_warning_says_so(onnx_kit, tmp_path, caplog):
    model = _bn_model(onnx_kit, gamma=[0.5, 2.0], beta=[1.0, -1.0])
    ann = import_onnx(model).graph
    cal = bn_scales(model, ann)
    # the 99.9th percentile of the equal mixture of N(1, 0.25) and N(-1, 4), rectified
    x = np.linspace(0, 20, 200001)
    from math import erf
    cdf = 0.5 * np.array([0.5 * (1 + erf((v - 1) / 0.5 / 2 ** 0.5)) + 0.5 * (1 + erf((v + 1) / 2 / 2 ** 0.5))
                          for v in x[::100]])
    expect = x[::100][np.searchsorted(cdf, 0.999)]
    assert cal.lam["r"][0] == pytest.approx(expect, rel=2e-3)
    assert cal.method.startswith("bn-stats") and "1 layer(s) from the BatchNorm statistics" in cal.warnings[0]
    per_channel = bn_scales(model, ann, norm="channel").lam["r"]
    assert per_channel == pytest.approx([1.0 + 3.0902 * 0.5, -1.0 + 3.0902 * 2.0], rel=1e-3)
    path = tmp_path / "bn.onnx"
    onnx.save(model, path)
    r = cli("convert", path, "--norm", "percentile", "-o", tmp_path / "o")
    assert r.returncode == 0, r.stderr
    info = json.loads((tmp_path / "o" / "compile.json").read_text())
    assert info["normalization"].startswith("bn-stats") and info["lam"]["r"][0] == pytest.approx(cal.lam["r"][0])
    assert "BatchNorm statistics" in r.stderr


def test_without_batchnorm_thresholds_come_from_synthetic_inputs(onnx_kit):
    """No BN statistics: the scales are the activations' percentile on uniform [-1, 1]
    inputs (seeded), well inside the weight bound, and the warning says where they came from."""
    w1 = np.random.default_rng(0).normal(0, 0.3, (6, 16)).astype(np.float32)
    model = _dense_model(onnx_kit, w1, 16)
    graph = import_onnx(model).graph
    cal = data_free_scales(model, graph, seed=3)
    assert cal.method.startswith("synthetic") and "synthetic inputs" in cal.warnings[-1]
    bound = weight_bounds(graph, warn=False).lam["r"][0]
    assert 0 < cal.lam["r"][0] < bound
    assert cal.lam["r"][0] == data_free_scales(model, graph, seed=3).lam["r"][0]  # reproducible


def test_layers_after_an_add_get_moments_propagated_from_the_batchnorms(onnx_kit):
    """conv-BN-ReLU (a), then conv-BN plus a, ReLU (b): b's input is modelled as the sum of
    independent Normal(beta2, gamma2^2) and rectified a, per channel."""
    from math import erf, exp, pi, sqrt

    rng = np.random.default_rng(3)
    g1, b1, g2, b2 = [0.5, 1.5], [0.2, -0.4], [1.0, 0.3], [-0.5, 0.6]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c1", "g1", "b1", "m", "v"], ["n1"]),
             helper.make_node("Relu", ["n1"], ["a"]),
             helper.make_node("Conv", ["a", "w2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c2", "g2", "b2", "m", "v"], ["n2"]),
             helper.make_node("Add", ["n2", "a"], ["s"]), helper.make_node("Relu", ["s"], ["b"]),
             helper.make_node("Flatten", ["b"], ["f"]), helper.make_node("Gemm", ["f", "wo"], ["y"], transB=1)]
    inits = {"w1": rng.normal(0, 0.5, (2, 1, 3, 3)), "w2": rng.normal(0, 0.5, (2, 2, 3, 3)),
             "g1": g1, "b1": b1, "g2": g2, "b2": b2, "m": [0.0, 0.0], "v": [1.0, 1.0],
             "wo": rng.normal(0, 0.5, (3, 32))}
    model = onnx_kit.model(nodes, {k: np.asarray(v, np.float32) for k, v in inits.items()}, in_shape=(1, 4, 4))
    cal = bn_scales(model, import_onnx(model).graph, norm="channel")
    assert "1 from statistics propagated" in cal.warnings[0] and "'b'" in cal.warnings[0]

    def relu_moments(mu, sd):
        z = mu / sd
        cdf, pdf = 0.5 * (1 + erf(z / sqrt(2))), exp(-z * z / 2) / sqrt(2 * pi)
        mean = mu * cdf + sd * pdf
        return mean, (mu * mu + sd * sd) * cdf + mu * sd * pdf - mean ** 2

    for c in range(2):
        m_a, v_a = relu_moments(b1[c], g1[c])
        mean, sd = b2[c] + m_a, sqrt(g2[c] ** 2 + v_a)
        assert cal.lam["b"][c] == pytest.approx(mean + 3.0902 * sd, rel=2e-3)
