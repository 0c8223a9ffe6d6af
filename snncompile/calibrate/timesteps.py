"""Automatic choice of the time window: `convert --timesteps auto`.

The thresholds of a converted network do not depend on T (docs/semantics.md), so one
network can be simulated at any window. The search simulates it on the validation data at
each candidate T in ascending order and stops at the first whose SNN is within the allowed
drop of the ANN on the same data: the *smallest* candidate that meets it, by measurement,
with no assumption that accuracy grows with T (it need not).

Why not one run at the largest T, read at every prefix: with the input injected once
(``--input-mode once``, the default) the charge ``T * x`` at t = 0 and the first-step biases
``T * b`` depend on T, so the first steps of a long run are not a short run. The ascending
scan costs at most about twice the steps of the chosen T's own run (candidates double).

Criteria: classification (integer labels) compares accuracy, the drop in percentage points
(``--max-accuracy-drop``); regression (float targets) compares PSNR, the drop in dB
(``--max-psnr-drop``), as `evaluate` reports them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import onnx

from .statistics import onnx_forward
from ..data import Dataset
from ..errors import ModelError, UsageError
from ..ir import Graph
from ..sim.simulator import simulate

DEFAULT_CANDIDATES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
DEFAULT_MAX_DROP = 1.0  # percentage points of accuracy, or dB of PSNR
MAX_TIMESTEPS = 4096


class TimestepsNotFound(ModelError):
    """No candidate T keeps the SNN within the allowed drop of the ANN (exit 3)."""


@dataclass(frozen=True)
class AutoTOptions:
    """What `--timesteps auto` searches and what it must meet. A drop left None takes
    :data:`DEFAULT_MAX_DROP`; giving the one that does not fit the task is a usage error."""

    candidates: tuple[int, ...] = DEFAULT_CANDIDATES
    max_accuracy_drop: float | None = None  # percentage points (classification)
    max_psnr_drop: float | None = None      # dB (regression)

    def check(self) -> None:
        if not self.candidates or min(self.candidates) < 1 or max(self.candidates) > MAX_TIMESTEPS:
            raise UsageError(f"--timesteps-candidates must lie in 1..{MAX_TIMESTEPS}, got "
                             f"{','.join(map(str, self.candidates)) or 'none'}")
        for flag, v in (("--max-accuracy-drop", self.max_accuracy_drop),
                        ("--max-psnr-drop", self.max_psnr_drop)):
            if v is not None and not (np.isfinite(v) and v >= 0):
                raise UsageError(f"{flag} must be a number >= 0, got {v}")


def parse_candidates(text: str | None) -> tuple[int, ...]:
    """'1,2,4' or '4-12' or '1,2,8-10' -> the sorted distinct T values; None: the default."""
    if not text:
        return DEFAULT_CANDIDATES
    values: set[int] = set()
    try:
        for part in (p.strip() for p in text.split(",")):
            if "-" in part:
                lo, hi = (int(v) for v in part.split("-", 1))
                if hi < lo:
                    raise ValueError(part)
                values.update(range(lo, hi + 1))
            elif part:
                values.add(int(part))
    except ValueError:
        raise UsageError(f"--timesteps-candidates takes integers and ranges separated by commas "
                         f"(e.g. 1,2,4,8 or 4-16), got '{text}'") from None
    return tuple(sorted(values))


def parse_timesteps_option(text: str) -> int | None:
    """`--timesteps`: an integer, or 'auto' (None)."""
    if str(text).strip().lower() == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"--timesteps takes an integer or 'auto', got '{text}'") from None


@dataclass
class Trial:
    """One candidate: the SNN's score on the validation data and its drop from the ANN's."""

    timesteps: int
    score: float
    drop: float
    meets: bool


@dataclass
class Search:
    """One scan over the candidates, on one network (``phase``: conversion or tuned)."""

    phase: str
    trials: list[Trial] = field(default_factory=list)

    @property
    def chosen(self) -> int | None:
        return next((t.timesteps for t in self.trials if t.meets), None)


class TimestepSearch:
    """Scores networks on the validation data at each candidate T against the ANN."""

    def __init__(self, opts: AutoTOptions, model: onnx.ModelProto, ann: Graph, val: Dataset,
                 batch_size: int = 256):
        opts.check()
        self.opts, self.val, self.batch_size = opts, val, batch_size
        self.regression = not val.is_classification
        if self.regression and opts.max_accuracy_drop is not None:
            raise UsageError(f"'{val.path}' has float targets (regression), scored by PSNR",
                             "give --max-psnr-drop DB instead of --max-accuracy-drop")
        if not self.regression and opts.max_psnr_drop is not None:
            raise UsageError(f"'{val.path}' has integer labels (classification), scored by accuracy",
                             "give --max-accuracy-drop POINTS instead of --max-psnr-drop")
        given = opts.max_psnr_drop if self.regression else opts.max_accuracy_drop
        self.max_drop = DEFAULT_MAX_DROP if given is None else float(given)
        self.metric = "psnr" if self.regression else "accuracy"
        pred = np.concatenate([b[ann.meta["onnx_output"]] for b in onnx_forward(
            model, ann.meta["onnx_input"], [ann.meta["onnx_output"]], val.x, batch_size)])
        self.ann_score = self._score(pred)
        self.searches: list[Search] = []

    def _score(self, pred: np.ndarray) -> float:
        return float(self.val.score(pred)[self.metric])

    def _drop(self, score: float) -> float:
        # accuracy in percentage points; PSNR in dB (an infinite PSNR is a perfect match)
        if self.regression:
            return 0.0 if score == self.ann_score else float(self.ann_score - score)
        return 100.0 * (self.ann_score - score)

    def run(self, graph: Graph, phase: str,
            prepare: Callable[[Graph, int], Graph] | None = None) -> Search:
        """Simulate ``graph`` at each candidate, smallest first, until one meets the drop.
        ``prepare`` gives the network for a candidate T where it depends on T (a bias
        calibration made for that T)."""
        search = Search(phase)
        self.searches.append(search)
        for T in self.opts.candidates:
            g = prepare(graph, T) if prepare is not None else graph
            res = simulate(g, self.val.x, timesteps=T, batch_size=self.batch_size)
            score = self._score(res.output)
            drop = self._drop(score)
            search.trials.append(Trial(T, score, drop, bool(drop <= self.max_drop + 1e-9)))
            if search.trials[-1].meets:
                break
        return search

    def not_found(self, search: Search, tuned: bool, calibrated: bool = True) -> TimestepsNotFound:
        """The error for a scan where no candidate met the drop: the best one, and what to try."""
        best = min(search.trials, key=lambda t: (t.drop, t.timesteps))
        unit = "dB of PSNR" if self.regression else "points of accuracy"
        flag = "--max-psnr-drop" if self.regression else "--max-accuracy-drop"
        cands = ",".join(map(str, self.opts.candidates))
        tips = [f"allow a larger drop ({flag} {np.ceil(best.drop * 10) / 10:g} would take "
                f"T={best.timesteps})", "add larger windows (--timesteps-candidates "
                f"{cands},{2 * max(self.opts.candidates)})"]
        if tuned:
            tips.append("improve the tuning (more --epochs, a looser --fanin)")
        else:
            tips += [("try another --norm (channel, percentile, max)" if calibrated else
                      "calibrate with --calib"), "tune with --train"]
        return TimestepsNotFound(
            f"no time window in {cands} keeps the SNN within {self.max_drop:g} {unit} of the ANN "
            f"on '{self.val.path}' (ANN {self.metric} {self.ann_score:.4f}); the best is "
            f"T={best.timesteps}: {self.metric} {best.score:.4f}, a drop of {best.drop:.2f}",
            "; or ".join(tips) + (" (the finished tuning stages are kept in OUT/checkpoints)"
                                  if tuned else ""))

    def record(self) -> dict[str, Any]:
        """What compile.json keeps: criterion, candidates, ANN score, every trial."""
        return {"metric": self.metric, "drop_unit": "dB" if self.regression else "points",
                "max_drop": self.max_drop, "candidates": list(self.opts.candidates),
                "val": self.val.path, "samples": int(len(self.val.x)), "ann": self.ann_score,
                "searches": [{"phase": s.phase, "chosen": s.chosen,
                              "trials": [dataclasses.asdict(t) for t in s.trials]}
                             for s in self.searches],
                "chosen": self.searches[-1].chosen if self.searches else None}

