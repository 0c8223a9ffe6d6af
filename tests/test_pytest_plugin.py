"""The pytest plugin: a team's own test file compiles its model with the snncompile_build
fixture and gates on the target's limits and a baseline; a violated limit fails with every
violation in the message; the plugin costs nothing in runs that do not use it."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest_plugins = ["pytester"]

USER_TESTS = '''
MODEL = {model!r}
CALIB = {calib!r}
TEST = {test!r}


def test_fits_cyclesim(snncompile_build):
    build = snncompile_build(MODEL, calib=CALIB, timesteps=4, target="cyclesim", bits=8,
                             membrane_bits=24)
    build.check().assert_passed()           # limits of its own target
    res = build.check()                     # baseline from the ini file
    assert res and {{"accuracy", "synops", "cores"}} <= {{c.name for c in res.checks}}
    assert build.evaluate(TEST)["snn_accuracy"] > 0.5


def test_sixteen_bits_fit_cyclesim(snncompile_build):
    build = snncompile_build(MODEL, calib=CALIB, timesteps=4)   # 16-bit weights by default
    build.check(target="cyclesim").assert_passed()
'''


@pytest.fixture(scope="module")
def baseline(digits_dir, tmp_path_factory):
    """A baseline of the 8-bit cyclesim build the user's first test compiles."""
    from snncompile.passes.convert import ConversionOptions
    from snncompile.measure.gate import write_baseline
    from snncompile.app.compile import CompileRequest, compile_model

    d = tmp_path_factory.mktemp("plugin")
    compile_model(CompileRequest(model=str(digits_dir / "digits_cnn.onnx"), out=str(d / "b"),
                                 calib=str(digits_dir / "calib.npz"), target="cyclesim",
                                 options=ConversionOptions(timesteps=4, weight_bits=8, membrane_bits=24)))
    write_baseline(str(d / "b"), str(digits_dir / "test.npz"), str(d / "base.json"))
    return d / "base.json"


def test_user_tests_pass_and_fail_with_readable_messages(pytester, digits_dir, baseline):
    pytester.makeini(f"[pytest]\nsnncompile_baseline = {baseline}\n")
    pytester.makepyfile(test_model=USER_TESTS.format(model=str(digits_dir / "digits_cnn.onnx"),
                                                     calib=str(digits_dir / "calib.npz"),
                                                     test=str(digits_dir / "test.npz")))
    builds = pytester.path / "builds"
    res = pytester.runpytest("-p", "no:cacheprovider", "--snncompile-build-dir", str(builds))
    res.assert_outcomes(passed=1, failed=1)
    out = res.stdout.str()
    # The failure names each violated limit, its value, the maximum and the fix.
    assert "snncompile checks failed" in out
    assert "FAIL  limit cyclesim" in out and "weight bits (16) exceeds max (8); fix: --bits 8" in out
    assert "membrane bits (32) exceeds max (24); fix: --membrane-bits 24" in out
    assert len([p for p in builds.iterdir() if (p / "ir.json").exists()]) == 2  # kept where asked


def test_same_model_and_options_compile_once(pytester, digits_dir):
    pytester.makepyfile(test_cache=f'''
def test_cache(snncompile_build):
    a = snncompile_build({str(digits_dir / "digits_cnn.onnx")!r}, calib={str(digits_dir / "calib.npz")!r}, timesteps=4)
    b = snncompile_build({str(digits_dir / "digits_cnn.onnx")!r}, calib={str(digits_dir / "calib.npz")!r}, timesteps=4)
    assert a is b and a.artifact.graph.timesteps == 4


def test_unknown_option(snncompile_build):
    import pytest
    from snncompile.errors import UsageError
    with pytest.raises(UsageError, match="unknown option.*colour"):
        snncompile_build({str(digits_dir / "digits_cnn.onnx")!r}, colour="blue")
''')
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)


def test_plugin_is_registered_and_light():
    """Installed through the pytest11 entry point; loading it imports nothing heavy."""
    r = subprocess.run([sys.executable, "-m", "pytest", "--help"], capture_output=True, text=True, timeout=120)
    assert "--snncompile-baseline" in r.stdout and "--snncompile-build-dir" in r.stdout
    code = ("import sys, snncompile.app.pytest_plugin; "
            "print([m for m in ('torch', 'numpy', 'onnx', 'onnxruntime', 'matplotlib') if m in sys.modules])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr
