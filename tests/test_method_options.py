"""Options a tuning method cannot honour (issue 7): the registry's table says, per method,
which options it ignores and why; an ignored option the user set is refused before any work
when it asks for behaviour the method lacks, and warned about (named, with the method and
why) when it has nothing to act on. Options left at their defaults are never reported."""

from __future__ import annotations

import json
import subprocess

import pytest
from click.testing import CliRunner

from snncompile.app.cli import main
from snncompile.errors import UsageError
from snncompile.app.compile import CompileRequest, compile_model
from snncompile.tune.methods import METHODS, NEEDS, NONE, OPTIONS, review_options


def cli(*args: object) -> subprocess.CompletedProcess:
    """In-process run of the command line (no interpreter start-up)."""
    r = CliRunner().invoke(main, [str(a) for a in args])
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return subprocess.CompletedProcess(args, r.exit_code, r.stdout, r.stderr)


def test_the_table_names_only_known_options_and_every_refusal_has_a_method_that_honours_it():
    for m in (*METHODS.values(), NONE):
        assert set(m.cannot) <= set(OPTIONS), m.name
        assert all(why for why in m.cannot.values()), m.name
        for opt in m.cannot:
            if OPTIONS[opt].refuse:  # the fix can name a method to use instead
                assert any(o.honours(opt) for o in METHODS.values()), opt
    assert set(NEEDS) <= set(OPTIONS)
    # what the issue names: --prune-ahead is ignored by the one-stage methods, resume needs stages
    assert [k for k, m in METHODS.items() if not m.honours("prune_ahead")] == ["tandem", "stdb"]
    assert [k for k, m in METHODS.items() if m.honours("resume")] == ["ptl"]


@pytest.mark.parametrize("method,given,training,settings,expect", [
    ("ptl", ["surrogate"], True, {}, "--surrogate cannot be honoured by --method ptl: it trains with the tandem rule"),
    ("tl", ["surrogate_alpha"], True, {}, "--surrogate-alpha cannot be honoured by --method tandem"),
    ("ptl", ["balance_scale"], True, {}, "--balance-scale cannot be honoured by --method ptl"),
    ("ltl", ["balance_scale"], True, {}, "--balance-scale cannot be honoured by --method ltl"),
    ("tandem", ["resume"], True, {}, "--resume cannot be honoured by --method tandem: it trains in one stage"),
    ("stdb", ["resume"], True, {}, "--resume cannot be honoured by --method stdb"),
    ("ltl", ["surrogate_beta"], True, {}, "--surrogate-beta cannot be honoured by --method ltl with the "
                                            "linear surrogate (ltl's default)"),
    ("stdb", ["surrogate_beta"], True, {"surrogate": "linear"}, "--surrogate-beta cannot be honoured by "
                                                                 "--method stdb with the linear surrogate:"),
    ("none", ["surrogate"], False, {}, "--surrogate cannot be honoured by --method none: it converts only"),
    ("ptl", ["balance_scale"], False, {}, "--balance-scale cannot be honoured without --train"),
    ("stdb", ["percentile_search"], True, {}, "--percentile auto cannot be honoured by --method stdb: threshold"),
    ("ltl", ["percentile_search"], True, {}, "--percentile auto cannot be honoured by --method ltl: its thresholds"),
    ("none", ["percentile_search"], False, {}, "--percentile auto cannot be honoured by --method none: it converts"),
    ("ptl", ["percentile_search"], False, {}, "--percentile auto cannot be honoured without --train: it converts"),
    ("ltl", ["distill"], True, {}, "--distill cannot be honoured by --method ltl: it trains with its own loss"),
    ("stdb", ["distill"], True, {}, "--distill cannot be honoured by --method stdb: it trains with its own loss"),
    ("none", ["distill"], False, {}, "--distill cannot be honoured by --method none: it converts only"),
])
def test_refused_options(method, given, training, settings, expect):
    with pytest.raises(UsageError) as e:
        review_options(method, given, training=training, settings=settings)
    assert str(e.value).startswith(expect), str(e.value)
    assert "fix: drop --" in str(e.value) or "fix: add --surrogate exp" in str(e.value)


@pytest.mark.parametrize("method,given,training,settings,expect", [
    ("tandem", ["prune_ahead"], True, {"fanin": 64}, "--prune-ahead has no effect with --method tandem: it "
                                                     "trains in one stage"),
    ("stdb", ["prune_ahead"], True, {"fanin": 64}, "--prune-ahead has no effect with --method stdb"),
    ("stdb", ["percentile"], True, {}, "--percentile has no effect with --method stdb: threshold balancing"),
    ("none", ["epochs"], False, {}, "--epochs has no effect with --method none: it converts only"),
    ("ptl", ["patience"], False, {}, "--patience has no effect without --train"),
    ("ptl", ["device"], False, {}, "--device has no effect without --train"),
    ("ptl", ["batch_size"], False, {}, "--batch-size has no effect without --train"),
    ("none", ["prune_ahead"], False, {"fanin": 64}, "--prune-ahead has no effect with --method none"),
    ("ptl", ["prune_ahead"], True, {}, "--prune-ahead has no effect without --fanin"),
    ("ltl", ["fanin_mode"], True, {}, "--fanin-mode has no effect without --fanin"),
    ("ptl", ["percentile"], True, {"norm": "max"}, "--percentile has no effect without --norm percentile"),
    ("tandem", ["joint_final"], True, {}, "--joint-final has no effect with --method tandem: it trains every layer"),
    ("ltl", ["joint_final"], True, {}, "--joint-final has no effect with --method ltl: it has no progressive"),
    ("ptl", ["joint_final"], False, {}, "--joint-final has no effect without --train"),
    ("tandem", ["count_aware"], True, {}, "--count-aware has no effect with --method tandem: every layer spikes"),
    ("stdb", ["count_aware"], True, {}, "--count-aware has no effect with --method stdb: every layer spikes"),
    ("ltl", ["fit_thresholds"], True, {}, "--fit-thresholds has no effect with --method ltl: its thresholds are "
                                          "the teacher's scales"),
    ("stdb", ["fit_thresholds"], True, {}, "--fit-thresholds has no effect with --method stdb: threshold balancing"),
    ("ptl", ["distill_temperature"], True, {}, "--distill-temperature has no effect without --distill above 0"),
    ("stdb", ["distill_temperature"], True, {"distill": 0.5}, "--distill-temperature has no effect with "
                                                              "--method stdb: it trains with its own loss"),
])
def test_ignored_options_are_warnings_naming_option_method_and_why(method, given, training, settings, expect):
    (note,) = review_options(method, given, training=training, settings=settings)
    assert note.startswith(expect) and note.endswith("it is ignored"), note


@pytest.mark.parametrize("method,given,settings", [
    ("ptl", ["prune_ahead", "fanin_mode", "percentile", "epochs", "patience", "batch_size", "device",
             "resume", "joint_final", "count_aware", "fit_thresholds", "distill", "distill_temperature"],
     {"fanin": 64, "distill": 0.5}),
    ("tandem", ["fanin_mode", "percentile", "epochs", "patience", "batch_size", "device", "distill",
                "fit_thresholds"],
     {"fanin": 64}),
    ("ltl", ["prune_ahead", "percentile", "surrogate", "surrogate_alpha"], {"fanin": 64}),
    ("ltl", ["surrogate_beta"], {"surrogate": "exp"}),
    ("stdb", ["surrogate", "surrogate_alpha", "surrogate_beta", "balance_scale", "fanin_mode"], {"fanin": 64}),
])
def test_honoured_options_pass_silently(method, given, settings):
    assert review_options(method, given, training=True, settings=settings) == []


def test_torchrun_is_refused_for_methods_not_made_for_it():
    with pytest.raises(UsageError, match="--method ltl does not run under torchrun"):
        review_options("ltl", [], world_size=2)
    assert review_options("tandem", [], world_size=2) == []


def _convert(d, out, *extra):
    return cli("convert", d / "digits_cnn.onnx", "--calib", d / "calib.npz", "-T", "4", "--bits", "8",
               "-o", out, *extra)


def test_cli_reports_only_what_the_user_set(digits_dir, tmp_path):
    """--prune-ahead left at its default says nothing for tandem; set explicitly (to the
    same value) it is a warning on stderr and in compile.json, and the run goes on."""
    d = digits_dir
    tune = ["--train", d / "val.npz", "--val", d / "val.npz", "--fanin", "64", "--method", "tandem",
            "--epochs", "0"]
    r = _convert(d, tmp_path / "quiet", *tune)
    assert r.returncode == 0, r.stderr
    assert "--prune-ahead" not in r.stderr
    r = _convert(d, tmp_path / "loud", *tune, "--prune-ahead", "99")
    assert r.returncode == 0, r.stderr
    want = "warning: --prune-ahead has no effect with --method tandem"
    assert r.stderr.count(want) == 1, r.stderr
    assert any(w.startswith("--prune-ahead has no effect")
               for w in json.loads((tmp_path / "loud" / "compile.json").read_text())["warnings"])


@pytest.mark.parametrize("flag,key,default", [("--no-joint-final", "joint_final", True),
                                              ("--no-count-aware", "count_aware", True),
                                              ("--no-fit-thresholds", "fit_thresholds", True)])
def test_cli_ptl_flags_reach_the_schedule(digits_dir, tmp_path, flag, key, default):
    """--no-joint-final, --no-count-aware and --no-fit-thresholds (all three on by default)
    go into the tuning options (recorded with the tuning, and part of what --resume must
    match); what they do is tested in test_ptl and test_tandem."""
    d = digits_dir
    tune = ["--train", d / "val.npz", "--val", d / "val.npz", "--epochs", "0"]
    for name, extra in (("plain", []), ("set", [flag])):
        r = _convert(d, tmp_path / name, *tune, *extra)
        assert r.returncode == 0, r.stderr
        want = default is not (name == "set")
        info = json.loads((tmp_path / name / "compile.json").read_text())
        assert info["tuning"][key] is want and info["warnings"] == []
        run = json.loads((tmp_path / name / "checkpoints" / "run.json").read_text())
        assert run["tuning"][key] is want


def test_cli_distill_reaches_the_schedule(digits_dir, tmp_path):
    """--distill and its temperature go into the tuning options (recorded with the tuning,
    part of what --resume must match); what they do is tested in test_ptl. A share outside
    [0, 1] is refused before anything is written."""
    d = digits_dir
    tune = ["--train", d / "val.npz", "--val", d / "val.npz", "--epochs", "1"]
    r = _convert(d, tmp_path / "kd", *tune, "--distill", "0.5", "--distill-temperature", "2")
    assert r.returncode == 0, r.stderr
    info = json.loads((tmp_path / "kd" / "compile.json").read_text())
    assert (info["tuning"]["distill"], info["tuning"]["distill_temperature"]) == (0.5, 2.0)
    assert info["warnings"] == []
    run = json.loads((tmp_path / "kd" / "checkpoints" / "run.json").read_text())
    assert (run["tuning"]["distill"], run["tuning"]["distill_temperature"]) == (0.5, 2.0)
    r = _convert(d, tmp_path / "bad", *tune, "--distill", "1.5")
    assert r.returncode == UsageError.exit_code and r.stderr.startswith("error: Invalid value for '--distill': 1.5 is not in the range 0<=x<=1")
    assert "Traceback" not in r.stderr and not (tmp_path / "bad").exists()


def test_cli_percentile_auto_chooses_each_layer_on_validation(digits_dir, tmp_path):
    """--percentile auto: every IF layer's percentile is one of the grid's, the one whose
    converted network scored best on --val (recorded per stage with every candidate's
    score), and the search is part of what --resume must match."""
    from snncompile.tune.ptl import PERCENTILE_GRID

    d = digits_dir
    r = _convert(d, tmp_path / "auto", "--train", d / "val.npz", "--val", d / "val.npz", "--epochs", "0",
                 "--percentile", "auto")
    assert r.returncode == 0, r.stderr
    info = json.loads((tmp_path / "auto" / "compile.json").read_text())
    tuning = info["tuning"]
    layers = [layer for st in tuning["stages"] for layer in st.get("percentiles", {})]
    assert sorted(layers) == sorted(info["lam"]) and set(tuning["percentiles"]) == set(layers)
    for st in tuning["stages"]:
        for layer, rec in st.get("percentiles", {}).items():
            assert rec["chosen"] in PERCENTILE_GRID and list(rec["val"]) == [f"{p:g}" for p in PERCENTILE_GRID]
            key = {p: (m["val_accuracy"], -m["val_loss"]) for p, m in rec["val"].items()}
            assert key[f"{rec['chosen']:g}"] == max(key.values())
            assert tuning["percentiles"][layer] == rec["chosen"]
            assert st["converted"] == rec["val"][f"{rec['chosen']:g}"]  # the stage starts from it
    run = json.loads((tmp_path / "auto" / "checkpoints" / "run.json").read_text())
    assert run["tuning"]["percentile_search"] == list(PERCENTILE_GRID)
    assert "percentile auto" not in r.stderr  # honoured: no warning


@pytest.mark.parametrize("extra,expect", [
    (["--percentile", "auto"], "error: --percentile auto cannot be honoured without --train"),
    (["--percentile", "high"], "error: Invalid value for '--percentile': 'high' is neither a number in (0, 100] nor auto"),
    (["--percentile", "auto", "--train", "TRAIN", "--val", "TRAIN", "--method", "stdb"],
     "error: --percentile auto cannot be honoured by --method stdb"),
])
def test_cli_bad_percentile_is_refused_before_anything_is_written(digits_dir, tmp_path, extra, expect):
    d = digits_dir
    out = tmp_path / "out"
    r = _convert(d, out, *[str(d / "val.npz") if a == "TRAIN" else a for a in extra])
    assert r.returncode == UsageError.exit_code, r.stderr
    assert r.stderr.startswith(expect), r.stderr
    assert "Traceback" not in r.stderr and not out.exists()


def test_cli_refusal_is_a_usage_error_before_anything_is_written(digits_dir, tmp_path):
    d = digits_dir
    out = tmp_path / "out"
    r = _convert(d, out, "--train", d / "val.npz", "--val", d / "val.npz", "--method", "ltl",
                 "--surrogate-beta", "0.05")
    assert r.returncode == UsageError.exit_code, r.stderr
    assert r.stderr.startswith("error: --surrogate-beta cannot be honoured by --method ltl")
    assert "Traceback" not in r.stderr and not out.exists()


def test_api_callers_are_reviewed_on_values_that_differ_from_the_defaults(digits_dir, tmp_path):
    """Without ``explicit`` (scripts calling compile_model) a non-default value counts as set."""
    d = digits_dir
    req = CompileRequest(model=str(d / "digits_cnn.onnx"), out=str(tmp_path / "o"), calib=str(d / "calib.npz"),
                         method="none", epochs=5)
    res = compile_model(req)
    assert any(w.startswith("--epochs has no effect with --method none") for w in res["warnings"])
    res = compile_model(CompileRequest(model=req.model, out=req.out, calib=req.calib, method="none", force=True))
    assert not any("has no effect" in w for w in res["warnings"])
