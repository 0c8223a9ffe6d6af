"""Every case of the bad-input corpus (tests/bad_inputs.py) gets one clean answer: a non-zero
exit other than 1 (which Python gives a crash and `check` a failed check), exactly one
"error:" with a "fix:", no traceback, and nothing left behind where the output would go
(an output that existed, like the checkpoints of a resumed run, is left as it was)."""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import bad_inputs as corpus
from snncompile.app.cli import main
from snncompile.app.cli_errors import EXIT_INTERNAL


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> dict[str, Path]:
    """A compiled artifact and an interrupted tuning run's checkpoints, made once."""
    root = tmp_path_factory.mktemp("pristine")
    hook = sys.unraisablehook
    try:
        made = {"artifact": corpus.make_artifact(root), "checkpoints": corpus.make_checkpoints(root)}
    finally:
        sys.unraisablehook = hook  # the CLI's interrupt handler silences it for the exit
    return made


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too) with a hash of its bytes."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def invoke(args: list[str]) -> tuple[int, str, BaseException | None]:
    hook = sys.unraisablehook
    try:
        r = CliRunner().invoke(main, args)
    finally:
        sys.unraisablehook = hook
    exc = None if r.exception is None or isinstance(r.exception, SystemExit) else r.exception
    return r.exit_code, r.output, exc


def assert_clean_error(code: int, output: str, expected: int) -> None:
    assert code == expected, output
    assert code not in (0, 1, EXIT_INTERNAL)
    assert "Traceback" not in output and "internal error" not in output, output
    lines = output.strip().splitlines()
    assert sum("error:" in line for line in lines) == 1, output
    assert sum(line.strip().startswith("fix:") for line in lines) == 1, output


@pytest.mark.filterwarnings("error::RuntimeWarning")  # numpy noise before the error counts too
@pytest.mark.parametrize("case", corpus.CASES, ids=[c.name for c in corpus.CASES])
def test_bad_input_gets_one_clean_error(case, pristine, tmp_path, monkeypatch):
    monkeypatch.setenv("SNNCOMPILE_DATA_LIMIT", "1M")  # the over-the-limit case; others are tiny
    kit = corpus.Kit(tmp_path)
    if case.needs == "artifact":
        shutil.copytree(pristine["artifact"], kit.art)
    elif case.needs == "checkpoints":
        shutil.copytree(pristine["checkpoints"], kit.out)
    args = case.build(kit)
    before = snapshot(Path(kit.out))
    siblings = set(os.listdir(tmp_path))
    code, output, exc = invoke(args)
    assert exc is None, f"{type(exc).__name__}: {exc}"
    assert_clean_error(code, output, case.exit_code)
    assert snapshot(Path(kit.out)) == before  # nothing written, nothing removed
    assert not {p for p in set(os.listdir(tmp_path)) - siblings if p.startswith(".")}


def test_the_corpus_cases_are_distinct():
    names = [c.name for c in corpus.CASES]
    assert len(names) == len(set(names))


def test_click_errors_read_like_ours(tmp_path):
    code, output, _ = invoke(["convert", "m.onnx", "-o", str(tmp_path / "o"), "--bitz", "8"])
    assert code == 2 and output.startswith("error: No such option '--bitz'.") and "'--bits'" in output
    assert "fix: see 'main convert --help'" in output  # (CliRunner's program name)
    code, output, _ = invoke([])
    assert output.startswith("Usage:") and "Commands:" in output and "error" not in output


def test_a_good_pooling_model_converts(tmp_path):
    """The control for the pooling cases: the same model with sane attributes converts."""
    kit = corpus.Kit(tmp_path)
    code, output, _ = invoke(["convert", kit.save_model(corpus.tiny_model(pool=("MaxPool", {}))),
                              "-o", kit.out])
    assert code == 0, output


def test_a_resume_from_intact_checkpoints_still_works(pristine, tmp_path):
    """The control for the resume cases: the same command on undamaged checkpoints."""
    kit = corpus.Kit(tmp_path)
    shutil.copytree(pristine["checkpoints"], kit.out)
    code, output, exc = invoke([a.format(data=kit.data) for a in kit.resume()])
    assert exc is None and code == 0, output
    assert "loaded from checkpoint" in output and (Path(kit.out) / "ir.npz").is_file()


def test_check_names_the_data_path_it_looked_for(pristine, tmp_path):
    kit = corpus.Kit(tmp_path)
    shutil.copytree(pristine["artifact"], kit.art)
    args = corpus.by_name()["baseline-data-missing"].build(kit)
    _, output, _ = invoke(args)
    assert "records '../data.npz'" in output and str(tmp_path / "data.npz") in output


def test_a_baseline_moved_with_its_data_still_finds_it(pristine, tmp_path):
    """The data path is recorded relative to the baseline file."""
    kit = corpus.Kit(tmp_path / "a")
    (tmp_path / "a").mkdir()
    shutil.copytree(pristine["artifact"], kit.art)
    code, output, _ = invoke(["baseline", kit.art, "--data", kit.data, "-o", str(tmp_path / "a" / "b.json")])
    assert code == 0, output
    shutil.move(tmp_path / "a", tmp_path / "moved")
    code, output, _ = invoke(["check", str(tmp_path / "moved" / "art"), "--baseline",
                              str(tmp_path / "moved" / "b.json")])
    assert code == 0 and "accuracy" in output, output


def test_unexpected_exceptions_are_one_line_with_their_own_code(monkeypatch, tmp_path):
    """Our own bug: one line asking for a report, exit 70 (never 1); the traceback on request."""
    from snncompile.app import inspection

    def bug(*a, **k):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(inspection, "inspect_model", bug)
    monkeypatch.delenv("SNNCOMPILE_TRACEBACK")  # conftest sets it for the other tests
    kit = corpus.Kit(tmp_path)
    code, output, exc = invoke(["inspect", kit.model])
    assert code == EXIT_INTERNAL and exc is None
    assert output.startswith("internal error: ZeroDivisionError: boom") and "please report" in output
    assert len(output.strip().splitlines()) == 1
    monkeypatch.setenv("SNNCOMPILE_TRACEBACK", "1")
    code, output, exc = invoke(["inspect", kit.model])
    assert isinstance(exc, ZeroDivisionError)


def test_running_out_of_memory_is_the_environment_not_a_bug(monkeypatch, tmp_path):
    """A MemoryError (the machine's memory, or ulimit -v) is one error line with the fix,
    exit 2, never the internal-error report."""
    from snncompile.app import inspection

    def oom(*a, **k):
        raise MemoryError()

    monkeypatch.setattr(inspection, "inspect_model", oom)
    kit = corpus.Kit(tmp_path)
    code, output, exc = invoke(["inspect", kit.model])
    assert code == 2 and exc is None and "internal error" not in output
    assert output.startswith("error: out of memory while running 'inspect'") and "fix:" in output


def test_a_large_T_that_saturates_warns(tmp_path):
    """Narrow membranes and a negative bias: at 16 times the build's T the charge runs past
    the width, which evaluate says instead of reporting the score as if it meant something."""
    import numpy as np

    kit = corpus.Kit(tmp_path)
    model = kit.save_model(corpus.tiny_model(weights={"b1": np.array([-0.3, 0.5], np.float32)}))
    code, output, _ = invoke(["convert", model, "-o", kit.out, "--calib", kit.data, "-T", "4",
                              "--membrane-bits", "8", "--bits", "3", "--input-bits", "3"])
    assert code == 0, output
    code, output, _ = invoke(["evaluate", kit.out, "--data", kit.data, "-T", "4"])
    assert code == 0 and "saturated" not in output, output
    code, output, _ = invoke(["evaluate", kit.out, "--data", kit.data, "-T", "64"])
    assert code == 0 and "warning: membranes saturated" in output and "T=64" in output, output


def test_an_unwritable_output_is_named_as_given(tmp_path):
    kit = corpus.Kit(tmp_path)
    code, output, _ = invoke(corpus.by_name()["out-in-proc"].build(kit))
    assert code == 2 and "'/proc/snncompile-x'" in output, output


def test_a_full_disk_is_one_error_naming_the_output(tmp_path):
    """A file-size limit (as `ulimit -f`) stands in for a full disk: the write fails with
    EFBIG, the CLI names OUT, exits 2, and leaves nothing."""
    kit = corpus.Kit(tmp_path)
    out = tmp_path / "outs" / "o"
    out.parent.mkdir()

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))

    r = subprocess.run([sys.executable, "-m", "snncompile", "convert", kit.model, "-o", str(out),
                        "--calib", kit.data], capture_output=True, text=True, timeout=300,
                       preexec_fn=small_files)
    assert_clean_error(r.returncode, r.stderr, 2)
    assert f"'{out}'" in r.stderr and "File too large" in r.stderr
    assert os.listdir(out.parent) == []
