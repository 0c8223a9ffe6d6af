"""The `snncompile` command line.

Every command maps errors a user can cause (SnnCompileError) to one message on stderr and a
non-zero exit code, without a traceback; `--json` prints one JSON object on stdout.

Why one module: it is the declaration of the command line, one click command per job, each
a thin layer that parses options and calls the function that does the work (app.compile,
measure.evaluate, ...). Most of its length is option declarations with their help texts,
which read best next to the command they belong to.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import sys
import threading
from typing import Any, Callable, NoReturn

import click

from .. import __version__
from ..ir.options import V_INIT_MODES, WEIGHT_SCALES, ConversionOptions
from ..errors import SnnCompileError, UnsupportedOpError, UsageError
from ..ir import INPUT_MODES, RESET_MODES, SPIKE_MODES
from ..calibrate.statistics import NORM_MODES
from ..frontend.rewrite import MAXPOOL_CHOICES
from .helpsections import SectionedCommand
from .cli_errors import (EXIT_CHECK_FAILED, EXIT_INTERRUPTED, EXIT_NOT_BIT_EXACT, Cli, Real,
                         internal_error, number_or_auto, os_error_for)
from .table import format_table


def _running_as_program() -> bool:
    """Whether this process is the `snncompile` program (console script or ``python -m``),
    not a caller running a command in-process (click's CliRunner, a script)."""
    return getattr(sys.modules.get("__main__"), "main", None) is main


def _end_process(code: int) -> NoReturn:
    """Exit with ``code`` once the command's outputs are complete, skipping the interpreter's
    teardown when this process is the program. Teardown destroys what torch left behind (the
    worker threads of a torchrun job's gloo process group, an op cut short by an interrupt) in
    an order that can kill the process after its work is done: a torchrun worker aborted
    ("terminate called without an active exception", exit -6) after its run had finished,
    and an interrupted tuning run once ended in SIGSEGV instead of its exit code. Called
    in-process, it raises SystemExit as usual."""
    if not _running_as_program():
        sys.exit(code)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    logging.shutdown()
    os._exit(code)


def _exit_interrupted(message: str) -> NoReturn:
    """Say ``message`` on stderr and exit with EXIT_INTERRUPTED. An interrupt can cut an
    object short in its making (numba compiling a kernel on first use, through llvmlite),
    whose finalizer then fails as the process ends with an "Exception ignored" traceback:
    noise that would bury the one line saying what to do, so it is not printed."""
    click.echo(message, err=True)
    sys.unraisablehook = lambda unraisable: None
    _end_process(EXIT_INTERRUPTED)


def _terminate_as_interrupt(signum: int, frame: Any) -> None:
    """SIGTERM (a scheduler, `kill`, a container stop) unwinds like Ctrl-C: temporary
    outputs are removed and the command exits with EXIT_INTERRUPTED."""
    raise KeyboardInterrupt


def _late_interrupt(signum: int, frame: Any) -> None:
    """An interrupt once the command has finished (its output complete and reported, or
    its error said): end now, quietly, with EXIT_INTERRUPTED; raising would print a
    traceback from the interpreter's shutdown and keep the command's exit status."""
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    os._exit(EXIT_INTERRUPTED)


def _handle_errors(fn: Callable) -> Callable:
    """Every way a command can fail, as one message and its exit code: our errors with their
    fix; an OSError the environment caused (full or read-only disk, a path that cannot be
    written) as a usage error naming the path; any other exception as an internal error
    (exit EXIT_INTERNAL, one line; its traceback with SNNCOMPILE_TRACEBACK=1)."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        main_thread = threading.current_thread() is threading.main_thread()
        if main_thread:
            before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
            signal.signal(signal.SIGTERM, _terminate_as_interrupt)
        try:
            return fn(*args, **kwargs)
        except SnnCompileError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            _exit_interrupted("interrupted")
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort,
                BrokenPipeError):
            raise
        except OSError as e:
            err = os_error_for(e, fn.__name__, kwargs)
            click.echo(f"error: {err}", err=True)
            # a file object the failed write left open (numpy's zip of ir.npz) fails again as it is
            # collected at exit, an "Exception ignored" traceback burying the message: not printed
            sys.unraisablehook = lambda unraisable: None
            sys.exit(err.exit_code)
        except MemoryError:  # the machine's, or its limit's (ulimit -v): not our bug
            click.echo(f"error: out of memory while running '{fn.__name__}'\n  fix: free memory or "
                       "run it on a machine with more (docs/results.md lists the peak memory of "
                       "ImageNet-size networks), or use a smaller model", err=True)
            sys.exit(UsageError.exit_code)
        except Exception as e:
            internal_error(e)
        finally:
            if main_thread:  # called in-process (click's CliRunner, a script): put back theirs
                program = _running_as_program()
                for sig, handler in before.items():
                    signal.signal(sig, _late_interrupt if program else handler)
    return wrapper


def _quiet_option(fn: Callable) -> Callable:
    """-q/--quiet on a command: no progress bars. It sets a flag in the click context, not a
    parameter of the command's function."""
    def remember(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
        ctx.meta["snncompile.quiet"] = value
        return value
    return click.option("-q", "--quiet", is_flag=True, expose_value=False, callback=remember,
                        help="No progress bars (drawn only when stderr is a terminal anyway).")(fn)


def _show_progress(as_json: bool = False) -> bool:
    """Progress bars on stderr: on a terminal, unless --quiet or --json."""
    ctx = click.get_current_context(silent=True)
    quiet = bool(ctx is not None and ctx.meta.get("snncompile.quiet"))
    return not (quiet or as_json) and sys.stderr.isatty()


class _LowerLevelFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


def _setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LowerLevelFormatter())
    log = logging.getLogger("snncompile")
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO if verbose else logging.WARNING)
    log.propagate = False


@click.group(cls=Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="snncompile")
@click.option("-v", "--verbose", is_flag=True, help="Print more about each step.")
def main(verbose: bool) -> None:
    """Compile trained ANNs (ONNX) into integer spiking neural networks."""
    _setup_logging(verbose)


@main.command(cls=SectionedCommand)
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--out", default=None, type=click.Path(file_okay=False),
              help="Output directory (must not exist, unless --force); default: beside MODEL, "
                   "named MODEL.<target> (MODEL.snn for sim).")
@click.option("--target", default="sim", show_default=True,
              help="Backend to compile for: sim (reference simulator) or an installed backend "
                   "(see 'snncompile backends').")
@click.option("--target-option", "target_options", multiple=True, metavar="KEY=VALUE",
              help="A setting of the target backend (repeatable), e.g. neurons_per_core=256.")
@click.option("--timesteps", "-T", default="16", show_default=True,
              callback=number_or_auto(int, lambda v: v >= 1, "a whole number >= 1"),
              help="Time window T: a spike count over T steps stands for an activation; 'auto' "
                   "picks the smallest candidate that meets --max-accuracy-drop on --val.")
@click.option("--max-accuracy-drop", type=Real(0, 100), default=None, metavar="POINTS",
              help="With --timesteps auto: allowed SNN accuracy loss against the ANN on --val, in "
                   "percentage points (default 1.0).")
@click.option("--max-psnr-drop", type=Real(0), default=None, metavar="DB",
              help="With --timesteps auto, for float targets: allowed PSNR loss in dB (default 1.0).")
@click.option("--timesteps-candidates", default=None, metavar="LIST",
              help="With --timesteps auto: the T values tried, smallest first (default "
                   "1,2,4,...,256; ranges allowed, e.g. 1-32).")
@click.option("--calib", type=click.Path(dir_okay=False),
              help="Calibration data (.npz with x) for threshold normalization.")
@click.option("--norm", type=click.Choice(NORM_MODES), default="channel", show_default=True,
              help="Threshold normalization: layer-wise percentile, layer-wise max, or a percentile "
                   "per channel.")
@click.option("--percentile", default="99.9", show_default=True,
              callback=number_or_auto(float, lambda v: 0 < v <= 100, "a number in (0, 100]"),
              help="Percentile of each ReLU's output used as its scale (not given, without --calib "
                   "or BatchNorm statistics: 99 on the synthetic inputs); 'auto' (with --train): "
                   "each layer's is chosen on --val from 97..99.99 as tuning converts it.")
@click.option("--calibrate-bias/--no-calibrate-bias", default=True, show_default=True,
              help="Fit thresholds to T and take back each spiking layer's mean rate error (initial "
                   "membrane or bias), trying small-fan-in layers' weights refitted on the SNN's own "
                   "spikes, on --calib alone (no labels), or without --calib on the synthetic inputs.")
@click.option("--bits", "weight_bits", default=16, show_default=True, type=click.IntRange(2, 24),
              help="Signed integer weight width (symmetric; see --weight-scale).")
@click.option("--weight-exp", default=0, show_default=True, type=click.IntRange(0, 8),
              help="Loihi-style weights: a --bits mantissa times 2^E per layer, so thresholds "
                   "and biases get E more bits of resolution.")
@click.option("--weight-scale", type=click.Choice(WEIGHT_SCALES), default=ConversionOptions.weight_scale,
              show_default=True,
              help="What the --bits range spans: each output channel's largest weight (its neurons' "
                   "thresholds absorb the scale; outputs keep one), or the layer's.")
@click.option("--input-bits", default=8, show_default=True, type=click.IntRange(2, 24),
              help="Integer input width.")
@click.option("--input-mode", type=click.Choice(INPUT_MODES), default=ConversionOptions.input_mode,
              show_default=True, help="Analog input as charge: every step (TL), or all at t=0 (once, PTL).")
@click.option("--reset", type=click.Choice(RESET_MODES), default="subtract", show_default=True,
              help="IF reset: subtract the threshold, or reset to zero.")
@click.option("--spikes", type=click.Choice(SPIKE_MODES), default="binary", show_default=True,
              help="binary: spikes are +1; signed: a neuron that has fired can also emit -1 when "
                   "later inhibition takes its membrane below 0 (needs a target that carries "
                   "signed spikes).")
@click.option("--v-init", type=click.Choice(V_INIT_MODES), default="half", show_default=True,
              help="Initial membrane: half the threshold (counts round) or zero (counts floor).")
@click.option("--membrane-bits", default=32, show_default=True, type=click.IntRange(8, 52),
              help="Membrane width; values beyond it saturate (and are counted).")
@click.option("--maxpool", type=click.Choice(MAXPOOL_CHOICES), default="keep", show_default=True,
              help="keep: max pooling as a spike-count maximum; for targets without it (nir) "
                   "rewrite each max pool into an average of the same window: avg (an average pool, "
                   "no neurons of its own) or conv (a depthwise convolution with neurons of its "
                   "own); --train recovers the accuracy this costs.")
@click.option("--fanin", type=click.IntRange(1), default=None,
              help="Most non-zero incoming synapses per neuron (largest weights kept; with --train, "
                   "chosen by matching pursuit on calibration inputs and refitted).")
@click.option("--prune-ahead", default=99, show_default=True, type=click.IntRange(0),
              help="Stages before a layer spikes that its fan-in mask is imposed (0: when it "
                   "spikes; 1: a stage ahead, no ANN stage where the first layer's mask prunes "
                   "nothing, the choice for a tight budget; large: all masks first, in an ANN "
                   "stage 0).")
@click.option("--fanin-mode", type=click.Choice(["magnitude", "channels"]), default="magnitude",
              show_default=True, help="Which weights --fanin keeps: single weights per neuron (the largest, or "
                                      "with --train by matching pursuit), or whole input channels (full "
                                      "kernels) per output channel, of largest L1 norm (with --train: "
                                      "weight times input size).")
@click.option("--train", "train_path", type=click.Path(dir_okay=False),
              help="Training data (.npz with x, y): tune the SNN with progressive tandem learning.")
@click.option("--val", "val_path", type=click.Path(dir_okay=False),
              help="Validation data (.npz with x, y) the scheduler watches (needs --train).")
@click.option("--method", default="ptl", show_default=True, metavar="NAME",
              help="Tuning method: ptl (progressive tandem learning), tandem (all layers at once; "
                   "old name tl), ltl (local tandem learning), stdb (threshold balancing + "
                   "spike-timing-dependent BPTT), or none (convert only).")
@click.option("--surrogate", type=click.Choice(["exp", "linear"]), default=None,
              help="ltl/stdb: surrogate gradient, alpha*exp(-beta*dt) (exp; stdb's default) or "
                   "alpha*max(0, 1-|v/theta-1|) (linear; ltl's default).")
@click.option("--surrogate-alpha", type=Real(0, min_open=True), default=None,
              help="ltl/stdb: surrogate scale alpha [0.3].")
@click.option("--surrogate-beta", type=Real(0), default=None,
              help="ltl/stdb: decay beta of the exp surrogate per step since the last spike [0.01].")
@click.option("--balance-scale", type=Real(0, min_open=True), default=None,
              help="stdb: thresholds after balancing are this times the layer's largest activation [0.7].")
@click.option("--joint-final/--no-joint-final", default=True, show_default=True,
              help="ptl: the last stage fine-tunes every layer of the integer SNN end to end (at the "
                   "lower learning rate); --no-joint-final trains only the output layer there (PTL as "
                   "published).")
@click.option("--fit-thresholds/--no-fit-thresholds", default=True, show_default=True,
              help="ptl/tandem: a threshold re-derived as its layer starts spiking is the fraction of its "
                   "--percentile scale whose T-level count quantizes the layer's activation with the least "
                   "squared error (as conversion fits thresholds to T); --no-fit-thresholds keeps the "
                   "percentile itself.")
@click.option("--count-aware/--no-count-aware", default=True, show_default=True,
              help="ptl: layers not spiking yet pass the value of the spike count they will fire "
                   "(T + 1 levels) instead of their ReLU, so the ANN stages train for the count levels "
                   "to come; --no-count-aware trains them as ReLUs (PTL as published).")
@click.option("--distill", default=0.0, show_default=True, type=Real(0, 1), metavar="SHARE",
              help="ptl/tandem: share (0..1) of the training loss that matches the float ANN's "
                   "outputs (knowledge distillation) instead of the labels.")
@click.option("--distill-temperature", default=4.0, show_default=True, type=Real(0, min_open=True),
              help="Softmax temperature of --distill (classification).")
@click.option("--epochs", default=60, show_default=True, type=click.IntRange(0),
              help="Total epoch budget of tuning.")
@click.option("--patience", default=6, show_default=True, type=click.IntRange(1),
              help="Epochs without validation gain before a stage ends.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(1), help="Tuning batch size.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Where tuning runs.")
@click.option("--resume", is_flag=True, help="Continue an interrupted tuning run in OUT from its checkpoints.")
@click.option("--output", "output_name", help="ONNX output to compile, when the model has several.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2 ** 32 - 1),
              help="Seed for every random choice.")
@click.option("--force", is_flag=True, help="Replace the output directory if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@_quiet_option
@_handle_errors
def convert(model: str, out: str | None, target: str, timesteps: str, calib: str | None, norm: str,
            percentile: str, calibrate_bias: bool, weight_bits: int, weight_exp: int, weight_scale: str,
            input_bits: int,
            input_mode: str, reset: str, spikes: str, v_init: str, membrane_bits: int, fanin: int | None,
            prune_ahead: int, fanin_mode: str, train_path: str | None, val_path: str | None, method: str,
            surrogate: str | None, surrogate_alpha: float | None, surrogate_beta: float | None,
            balance_scale: float | None, joint_final: bool, fit_thresholds: bool, count_aware: bool, distill: float,
            distill_temperature: float, epochs: int, patience: int, batch_size: int, device: str, resume: bool,
            output_name: str | None, seed: int, force: bool, as_json: bool,
            target_options: tuple[str, ...] = (), max_accuracy_drop: float | None = None,
            max_psnr_drop: float | None = None, timesteps_candidates: str | None = None,
            maxpool: str = "keep") -> None:
    """Convert MODEL (ONNX) into an integer SNN in directory OUT; with --train/--val, tune it
    under the --bits/--fanin limits, layer by layer; with --target, use the target's profile
    for every conversion option not given, check it against the backend's limits and lower
    it into OUT/<target>/."""
    from .api import compile_request
    from .compile import compile_model
    from ..targets.select import default_out

    out = out or default_out(model, target)

    req = compile_request(model, out, target=target, timesteps=timesteps, bits=weight_bits, calib=calib,
                          norm=norm, percentile=percentile, calibrate_bias=calibrate_bias, output=output_name, seed=seed, force=force,
                          input_bits=input_bits, input_mode=input_mode, reset=reset, v_init=v_init,
                          membrane_bits=membrane_bits, weight_exp=weight_exp, weight_scale=weight_scale, spikes=spikes,
                          fanin=fanin, prune_ahead=prune_ahead, fanin_mode=fanin_mode, train=train_path,
                          val=val_path, method=method, epochs=epochs, patience=patience,
                          batch_size=batch_size, device=device, resume=resume,
                          progress=_show_progress(as_json), report=None if as_json else _epoch_reporter(),
                          target_options=target_options, max_accuracy_drop=max_accuracy_drop,
                          max_psnr_drop=max_psnr_drop, timesteps_candidates=timesteps_candidates,
                          surrogate=surrogate, surrogate_alpha=surrogate_alpha,
                          surrogate_beta=surrogate_beta, balance_scale=balance_scale,
                          joint_final=joint_final, fit_thresholds=fit_thresholds, count_aware=count_aware,
                          distill=distill,
                          distill_temperature=distill_temperature, explicit=_explicit_options(), maxpool=maxpool)
    try:
        summary = compile_model(req)
    except KeyboardInterrupt:
        if train_path:
            _exit_interrupted(f"interrupted: finished stages are kept in {out}/checkpoints; repeat the "
                              "command with --resume to continue")
        raise
    if "rank" in summary:  # a worker of a torchrun job: rank 0 reports
        _end_process(0)
    if as_json:
        click.echo(json.dumps(summary, indent=1))
    else:
        tuned = ""
        if "tuning" in summary:
            t = summary["tuning"]
            metric = (f"val accuracy {t['val_accuracy']:.4f}" if "val_accuracy" in t
                      else f"val loss {t.get('val_loss', float('nan')):.5f}")
            tuned = f", tuned ({t['method']}, {t['epochs']} epochs, {metric})"
        if "auto_timesteps" in summary:
            _print_timestep_search(summary["auto_timesteps"])
        if "profile" in summary:
            click.echo(summary["profile"]["line"])
        click.echo(f"wrote {summary['out']}: {summary['layers']} IF layers, T={summary['timesteps']}"
                   f"{tuned}, target {summary['target']} ({summary['seconds']:.2f} s)")
    if summary.get("tuning", {}).get("world_size", 1) > 1:  # rank 0 of a torchrun job
        _end_process(0)


def _explicit_options() -> frozenset[str]:
    """The parameters of the running command the user set (not left at their defaults), so
    that an option the method ignores is reported only when it was asked for."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    return frozenset(p.name for p in ctx.command.params if p.name is not None
                     and ctx.get_parameter_source(p.name) not in (None, ParameterSource.DEFAULT))


def _print_timestep_search(rec: dict[str, Any]) -> None:
    """The --timesteps auto search, one row per candidate tried."""
    unit, metric = rec["drop_unit"], rec["metric"]
    for s in rec["searches"]:
        click.echo(f"time window search on {rec['val']} ({s['phase']} network; ANN {metric} "
                   f"{rec['ann']:.4f}, allowed drop {rec['max_drop']:g} {unit}):")
        click.echo(format_table(["T", f"SNN {metric}", f"drop ({unit})", "meets"],
                                [[t["timesteps"], f"{t['score']:.4f}", f"{t['drop']:.2f}",
                                  "yes" if t["meets"] else "no"] for t in s["trials"]]))


def _epoch_reporter() -> Callable[[str], None]:
    """One line per tuning epoch on stderr, written around the progress bar."""
    def report(line: str) -> None:
        from tqdm import tqdm
        tqdm.write(line, file=sys.stderr)
    return report


@main.command()
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--data", required=True, type=click.Path(dir_okay=False),
              help="Labelled data (.npz with x and y).")
@click.option("--timesteps", "-T", default=None,
              help="Override T; a comma list (4,8,16,32) sweeps accuracy against latency.")
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(1))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@_quiet_option
@_handle_errors
def evaluate(out: str, data: str, timesteps: str | None, batch_size: int, as_json: bool) -> None:
    """Compare the ANN (onnxruntime) and the SNN (reference simulator) of OUT on DATA."""
    from ..measure.evaluate import evaluate_artifact, parse_timesteps

    res = evaluate_artifact(out, data, parse_timesteps(timesteps), batch_size,
                            progress=_show_progress(as_json))
    if as_json:
        click.echo(json.dumps(res, indent=1))
        return
    if "sweep" in res:
        own = res["timesteps"] == res["build_timesteps"]
        click.echo(f"per layer at T={res['timesteps']} ("
                   + ("the build's T" if own else f"the last of the sweep; the build's T is "
                                                 f"{res['build_timesteps']}") + "):")
    spent = [k for k in ("cores", "chips") if k in res]  # what the target spends per layer
    rows = [[r["name"], r["kind"], r["synapses"], r["neurons"], r["max_fanin"], r["weight_bits"],
             f"{r['spikes_per_sample']:.1f}" if "firing_rate" in r else "-",
             f"{r['firing_rate']:.3f}" if "firing_rate" in r else "-"]
            + [r.get(k, "-") for k in spent] for r in res["layers"]]
    click.echo(format_table(["layer", "kind", "synapses", "neurons", "max fan-in", "w bits",
                             "spikes/sample", "rate"] + [f"{res['target']} {k}" for k in spent],
                            rows))
    metric = "accuracy" if "ann_accuracy" in res else "mse"
    runs = res.get("sweep", [res])
    click.echo("")
    click.echo(format_table(["T", f"ANN {metric}", f"SNN {metric}", "SynOps/sample", "SynOps/MAC"],
                            [[r["timesteps"], f"{r.get('ann_' + metric, float('nan')):.4f}",
                              f"{r.get('snn_' + metric, float('nan')):.4f}",
                              f"{r['synops_per_sample']:.0f}",
                              f"{r['synops_per_mac']:.3f}" if r.get("synops_per_mac") is not None else "-"]
                             for r in runs]))
    click.echo(f"ANN MACs/sample: {res['ann_macs_per_sample']}   samples: {res['samples']}")
    if "snn_psnr" in res:
        click.echo(f"PSNR (dB, peak = target range): ANN {res['ann_psnr']:.2f}   SNN {res['snn_psnr']:.2f}")
    limits = res.get("constraints") or {}
    click.echo(f"max weight bits: {res['max_weight_bits']}"
               + (f" (limit {limits['bits']})" if limits.get("bits") else "")
               + f"   max fan-in: {res['max_fanin']}"
               + (f" (limit {limits['fanin']})" if limits.get("fanin") else "")
               + "".join(f"   {res['target']} {k}: {res[k]}" for k in spent))


@main.command()
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--data", required=True, type=click.Path(dir_okay=False),
              help="Labelled data (.npz with x and y) the baseline is measured on.")
@click.option("-o", "--output", "path", required=True, type=click.Path(dir_okay=False),
              help="Baseline file to write (JSON).")
@click.option("--force", is_flag=True, help="Replace the baseline file if it exists.")
@_quiet_option
@_handle_errors
def baseline(out: str, data: str, path: str, force: bool) -> None:
    """Record what the known-good build OUT achieves on DATA (accuracy, SynOps, T, neurons,
    cores) with default tolerances, for 'snncompile check --baseline'."""
    from ..measure.gate import write_baseline

    base = write_baseline(out, data, path, force, progress=_show_progress())
    m = base["metrics"]
    click.echo(f"wrote {path}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                            for k, v in m.items()))


@main.command()
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--target", help="Check against this backend's limits (default: the build's own target).")
@click.option("--baseline", "baseline_path", type=click.Path(dir_okay=False),
              help="Baseline file written by 'snncompile baseline'.")
@click.option("--data", type=click.Path(dir_okay=False),
              help="Labelled data for the baseline checks (default: the baseline's own).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--junit", type=click.Path(dir_okay=False), help="Also write the checks as JUnit XML.")
@_quiet_option
@_handle_errors
def check(out: str, target: str | None, baseline_path: str | None, data: str | None,
          as_json: bool, junit: str | None) -> None:
    """CI gate: verify the build OUT against a target's hardware limits and a baseline.

    Exit 0 when every check holds, 1 when one fails; 2 to 7 when the gate cannot run."""
    from ..fsutil import atomic_write_text, check_file_target
    from ..measure.gate import as_json as checks_json
    from ..measure.gate import junit_xml, run_checks

    if junit:  # a report CI rewrites on every run, but never over the build or its inputs
        check_file_target(junit, force=True, inputs=(out, baseline_path, data), what="JUnit report")
    checks = run_checks(out, target, baseline_path, data, progress=_show_progress(as_json))
    if junit:
        atomic_write_text(junit, junit_xml(checks, out))
    if as_json:
        click.echo(json.dumps(checks_json(checks), indent=1))
    else:
        for c in checks:
            click.echo(f"{'PASS' if c.passed else 'FAIL'}  {c.name}: {c.message}")
        bad = sum(not c.passed for c in checks)
        click.echo(f"\n{len(checks) - bad} passed, {bad} failed")
    if not all(c.passed for c in checks):
        sys.exit(EXIT_CHECK_FAILED)


@main.command()
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--data", required=True, type=click.Path(dir_okay=False),
              help="Labelled data (.npz with x and y) to measure the build on.")
@click.option("-o", "--output", "report_dir", required=True, type=click.Path(file_okay=False),
              help="Report directory to write (must not exist, unless --force).")
@click.option("--timesteps", "-T", default=None,
              help="Time steps of the accuracy sweep, e.g. 2,4,8,16,32 (the default; the build's "
                   "own T is always added).")
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(1))
@click.option("--force", is_flag=True, help="Replace the report directory if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the report's numbers as one JSON object.")
@_quiet_option
@_handle_errors
def report(out: str, data: str, report_dir: str, timesteps: str | None, batch_size: int,
           force: bool, as_json: bool) -> None:
    """Measure the build OUT on DATA and write a report with plots (accuracy vs T, firing
    rates, SynOps vs MACs, weight histograms, fan-in vs limit, ANN-vs-SNN divergence per
    layer) into a new directory: report.html (self-contained), report.md, PNGs, report.json."""
    from ..measure.evaluate import parse_timesteps
    from ..measure.report import write_report

    res = write_report(out, data, report_dir, parse_timesteps(timesteps), force, batch_size,
                       progress=_show_progress(as_json))
    if as_json:
        click.echo(json.dumps(res, indent=1))
    else:
        click.echo(f"wrote {report_dir}: " + ", ".join(res["files"]))


@main.command()
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["nir"]), default="nir", show_default=True,
              help="Exchange format (nir: a NIR graph, see docs/nir.md).")
@click.option("-o", "--output", "path", required=True, type=click.Path(dir_okay=False),
              help="File to write (e.g. model.nir).")
@click.option("--force", is_flag=True, help="Replace the file if it exists.")
@_handle_errors
def export(out: str, fmt: str, path: str, force: bool) -> None:
    """Write the compiled network OUT in an exchange format (whatever target it was compiled
    for); layers the format cannot express are all named and nothing is written (exit 6)."""
    from .export import export_artifact

    res = export_artifact(out, fmt, path, force)
    click.echo(f"wrote {res['path']}: {fmt} ({res['backend']} {res['backend_version']}), "
               f"T={res['timesteps']}, {res['bytes']} bytes")


@main.command()
@click.argument("target", type=click.Path())
@click.option("--output", "output_name", help="ONNX output to inspect, when the model has several.")
@click.option("--target", "backend_name", default=None,
              help="Also show what 'convert --target NAME' would choose from the target's profile "
                   "and the limits the model would still break.")
@click.option("--target-option", "target_options", multiple=True, metavar="KEY=VALUE",
              help="With --target: a setting of the backend (repeatable).")
@click.option("--bits", "weight_bits", type=int, default=None,
              help="With --target: the --bits convert would get (default: the profile's).")
@click.option("--fanin", type=int, default=None, help="With --target: the --fanin convert would get.")
@click.option("--calib", type=click.Path(), default=None,
              help="With --target: the --calib convert would get (the fitted --input-bits depends on it).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@_quiet_option
@_handle_errors
def inspect(target: str, output_name: str | None, as_json: bool, backend_name: str | None = None,
            target_options: tuple[str, ...] = (), weight_bits: int | None = None,
            fanin: int | None = None, calib: str | None = None) -> None:
    """Show what a MODEL.onnx converts to (and every op that cannot be converted), or print the
    integer IR of a compiled OUT directory."""
    import os

    from .inspection import inspect_artifact, inspect_model, inspect_target

    if os.path.isdir(target):
        report = inspect_artifact(target)
        if as_json:
            click.echo(json.dumps(report, indent=1))
            return
        rows = [[r["name"], r["op"], "x".join(map(str, r["shape"])), r.get("fanin", ""),
                 r.get("weight_bits", ""), _span(r.get("threshold")), r.get("reset", ""),
                 _span(r.get("scale"), "{:.4g}")] for r in report["nodes"]]
        click.echo(format_table(["node", "op", "shape", "fan-in", "w bits", "threshold", "reset",
                                 "scale"], rows))
        click.echo(f"\nT={report['timesteps']}  input: {report['input']['bits']}-bit, "
                   f"mode {report['input']['mode']}")
        return
    report = inspect_model(target, output=output_name)
    if backend_name and report["convertible"]:
        from ..targets.api import parse_backend_options

        report["target"] = inspect_target(target, backend_name, parse_backend_options(target_options),
                                          weight_bits, fanin, output_name, calib,
                                          progress=_show_progress(as_json))
    if as_json:
        click.echo(json.dumps(report, indent=1))
    else:
        if report["layers"]:
            rows = [[r["name"], r["op"], "x".join(map(str, r["shape"])), r["params"],
                     "" if r["fanin"] is None else r["fanin"], r["macs"]] for r in report["layers"]]
            click.echo(format_table(["node", "op", "shape", "params", "fan-in", "MACs"], rows))
            click.echo(f"\nparameters: {report['params']}   ANN MACs/sample: {report['ann_macs']}   "
                       f"IF layers: {report['if_layers']}")
        # the import's warnings are already on stderr (logged once, as by convert)
        for p in report["problems"]:
            click.echo(f"unsupported: {p}", err=True)
        if "target" in report:
            click.echo(report["target"]["line"])
            for v in report["target"]["violations"]:
                click.echo(f"violation: {v}")
    if not report["convertible"]:
        sys.exit(UnsupportedOpError.exit_code)


@main.command()
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--data", required=True, type=click.Path(dir_okay=False),
              help="Data (.npz with x, and y for accuracy).")
@click.option("--timesteps", "-T", default=None, type=click.IntRange(1), help="Override T.")
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(1),
              help="Samples per backend call (spikes of a batch are held in memory).")
@click.option("--target-option", "target_options", multiple=True, metavar="KEY=VALUE",
              help="A run option of the backend (repeatable), e.g. python=lava-env/bin/python for "
                   "loihi; the build's own options come from OUT, its run options never do.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@_quiet_option
@_handle_errors
def run(out: str, data: str, timesteps: int | None, batch_size: int, as_json: bool,
        target_options: tuple[str, ...] = ()) -> None:
    """Run OUT on the backend it was compiled for, and compare every spike and output with
    the reference simulator on the same inputs (exit 8 when they differ)."""
    from ..targets.api import parse_backend_options
    from .run import run_artifact

    res = run_artifact(out, data, timesteps, batch_size, parse_backend_options(target_options),
                       progress=_show_progress(as_json))
    if as_json:
        click.echo(json.dumps(res, indent=1))
    else:
        click.echo(f"backend: {res['backend']} {res['backend_version']}")
        for k in ("accuracy", "mse"):
            if k in res:
                click.echo(f"{k}: {res[k]:.4f}")
        click.echo(f"bit_exact: {str(res['bit_exact']).lower()}")
        click.echo(f"samples: {res['samples']}  T: {res['timesteps']}  backend {res['seconds_backend']:.2f} s, "
                   f"reference {res['seconds_reference']:.2f} s")
        for k, v in res["stats"].items():
            if isinstance(v, (int, float, str)):
                click.echo(f"{k}: {v:.6g}" if isinstance(v, float) else f"{k}: {v}")
    if not res["bit_exact"]:
        for d in res["differences"][:5]:
            click.echo(f"difference: {d}", err=True)
        click.echo("error: the backend's spikes or outputs differ from the reference simulator\n"
                   "  fix: this is a bug of the backend (or of the artifact): report it to the "
                   "backend's authors with the differences above", err=True)
        sys.exit(EXIT_NOT_BIT_EXACT)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@_handle_errors
def backends(as_json: bool) -> None:
    """List the compile targets: the built-in reference simulator and every installed backend
    plugin (entry-point group snncompile.backends), with versions and limits."""
    from ..targets.api import available_backends, get_backend

    rows: list[dict[str, Any]] = [{"name": "sim", "version": __version__, "can_run": True,
                                   "description": "the reference simulator (built in, no limits)",
                                   "limits": {}}]
    for name, ep in available_backends().items():
        try:
            rows.append(get_backend(name).info())
        except SnnCompileError as e:  # one broken plugin must not hide the others
            rows.append({"name": name, "version": None, "can_run": False, "error": e.message,
                         "description": f"failed to load ({ep.value})", "limits": {}})
    if as_json:
        click.echo(json.dumps({"backends": rows}, indent=1))
        return
    click.echo(format_table(["target", "version", "runs", "description"],
                            [[r["name"], r["version"] or "-", "yes" if r["can_run"] else "no",
                              r["description"]] for r in rows]))
    for r in rows:
        if r.get("error"):
            click.echo(f"\n{r['name']}: error: {r['error']}")
            continue
        lim = {k: v for k, v in r["limits"].items() if v not in (None, {}, [])}
        if lim:
            click.echo(f"\n{r['name']} limits: " + ", ".join(
                f"{k}={'/'.join(v) if isinstance(v, list) else v}" for k, v in lim.items() if k != "sources"))
        if r.get("profile"):
            click.echo(f"{r['name']} profile (convert's defaults for it): "
                       + ", ".join(f"{k}={v}" for k, v in r["profile"].items()))


def _span(v: list | None, fmt: str = "{}") -> str:
    if not v:
        return ""
    return fmt.format(v[0]) if v[0] == v[1] else f"{fmt.format(v[0])}..{fmt.format(v[1])}"
