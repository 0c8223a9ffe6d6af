"""Per-stage checkpoints of a tuning run, so an interrupted run can resume.

Layout (all files written through a temporary file and a rename, so each is whole or absent)::

    OUT/checkpoints/run.json          what the run was started with (checked on --resume)
    OUT/checkpoints/stage_K.npz       module state (float weights, biases, fan-in masks) at
                                      the end of stage K: the stage's best weights, layer K fixed
    OUT/checkpoints/stage_K.json      stage K's record: epochs used, history, best metric

No pickle: tensors go into a plain .npz, everything else into JSON. A stage's .json is
written after its .npz, so a .json means the stage is complete.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UsageError
from ..fsutil import atomic_write_text

DIRNAME = "checkpoints"
RUN_FILE = "run.json"
_STAGE = re.compile(r"^stage_(\d+)\.json$")


class CheckpointDir:
    """The checkpoint folder of one tuning run."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def start(self, run: dict[str, Any], resume: bool) -> None:
        """Create the folder and record ``run``; with ``resume``, existing checkpoints must
        come from an identical run (else UsageError naming what differs)."""
        run = json.loads(json.dumps(run))  # as it reads back (tuples become lists)
        old = self.read_run()
        if resume and old is not None:
            diff = sorted(k for k in set(old) | set(run) if old.get(k) != run.get(k))
            if diff:
                raise UsageError(f"the checkpoints in '{self.path}' come from a different run "
                                 f"(differs in: {', '.join(diff)})",
                                 "repeat the original command with --resume, or use --force to start over")
        if not resume:
            for p in self.path.glob("stage_*"):
                p.unlink()
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path / RUN_FILE, json.dumps(run, indent=1, sort_keys=True))

    def read_run(self) -> dict[str, Any] | None:
        p = self.path / RUN_FILE
        if not p.is_file():
            return None
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError:
            return None

    def completed(self) -> int:
        """The last stage with a complete checkpoint (-1 when none; stage 0 is the ANN stage)."""
        if not self.path.is_dir():
            return -1
        done = [int(m.group(1)) for p in self.path.iterdir() if (m := _STAGE.match(p.name))
                and (self.path / f"stage_{m.group(1)}.npz").is_file()]
        return max(done, default=-1)

    def save(self, stage: int, state: dict[str, torch.Tensor], record: dict[str, Any]) -> None:
        arrays = {k: v.detach().cpu().numpy() for k, v in state.items()}
        npz = self.path / f"stage_{stage}.npz"
        tmp = self.path / f".stage_{stage}.npz.tmp"
        with open(tmp, "wb") as f:  # a file object keeps numpy from appending ".npz"
            np.savez(f, **arrays)
        os.replace(tmp, npz)
        atomic_write_text(self.path / f"stage_{stage}.json", json.dumps(record, indent=1))

    def load(self, stage: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        with np.load(self.path / f"stage_{stage}.npz", allow_pickle=False) as f:
            state = {k: torch.from_numpy(f[k].copy()) for k in f.files}
        record = json.loads((self.path / f"stage_{stage}.json").read_text())
        return state, record
