"""Per-stage checkpoints of a tuning run, so an interrupted run can resume.

Layout (all files written through a temporary file and a rename, so each is whole or absent)::

    OUT/checkpoints/run.json          what the run was started with (checked on --resume)
    OUT/checkpoints/stage_K.npz       module state (float weights, biases, fan-in masks) at
                                      the end of stage K: the stage's best weights, layer K fixed
    OUT/checkpoints/stage_K.json      stage K's record: epochs used, history, best metric

No pickle: tensors go into a plain .npz, everything else into JSON. A stage's .json is
written after its .npz, so a .json means the stage is complete. Each stage's record holds
the fingerprint of the run record it belongs to.

Resuming trusts nothing it cannot check: a missing or unreadable run record, a stage of
another run, a damaged .npz or .json, arrays whose names, shapes or types differ from the
network's, or NaN/infinite values all refuse the resume with one error (nothing is loaded),
and the fix is to start over.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ArtifactError, UsageError
from ..fsutil import atomic_write_text

DIRNAME = "checkpoints"
RUN_FILE = "run.json"
_STAGE = re.compile(r"^stage_(\d+)\.json$")
_START_OVER = "start over with --force (the finished stages are lost), or restore the checkpoints"
_RECORD_KEYS = {"stage": int, "epochs_used_total": int, "history": list, "summary": dict, "run": str}


def _fingerprint(run: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(run, sort_keys=True).encode()).hexdigest()


class CheckpointDir:
    """The checkpoint folder of one tuning run."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.run_id: str | None = None  # the fingerprint of the run record (set by start)

    def start(self, run: dict[str, Any], resume: bool) -> None:
        """Create the folder and record ``run``; with ``resume``, existing checkpoints must
        come from an identical run (else UsageError naming what differs)."""
        run = json.loads(json.dumps(run))  # as it reads back (tuples become lists)
        old = self.read_run()
        if resume and old is None and self.completed() >= 0:
            state = "damaged" if (self.path / RUN_FILE).exists() else "missing"
            raise ArtifactError(f"cannot resume: '{self.path / RUN_FILE}' is {state}, so nothing "
                                f"shows that the checkpoints in '{self.path}' come from this run",
                                _START_OVER)
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
        self.run_id = _fingerprint(run)

    def read_run(self) -> dict[str, Any] | None:
        """The run record, or None when it is missing or unreadable."""
        p = self.path / RUN_FILE
        if not p.is_file():
            return None
        try:
            run = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            return None
        return run if isinstance(run, dict) else None

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
        record = dict(record, run=self.run_id or "")
        atomic_write_text(self.path / f"stage_{stage}.json", json.dumps(record, indent=1))

    def load(self, stage: int, like: dict[str, torch.Tensor] | None = None
             ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Stage ``stage``'s state and record, checked: the record must be whole and of this
        run, and the state hold exactly ``like``'s arrays (names, shapes, types; the
        network's own state_dict), all finite. Anything else is an ArtifactError."""
        npz, rec = self.path / f"stage_{stage}.npz", self.path / f"stage_{stage}.json"
        try:
            record = json.loads(rec.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
            raise self._damaged(rec, f"not readable JSON ({e})") from None
        if not isinstance(record, dict):
            raise self._damaged(rec, "not a JSON object")
        for key, kind in _RECORD_KEYS.items():
            if not isinstance(record.get(key), kind) or isinstance(record.get(key), bool):
                raise self._damaged(rec, f"its '{key}' is missing or not a {kind.__name__}")
        if record["stage"] != stage:
            raise self._damaged(rec, f"it records stage {record['stage']}")
        if self.run_id is not None and record["run"] != self.run_id:
            raise ArtifactError(f"cannot resume: '{rec}' belongs to another run than "
                                f"'{self.path / RUN_FILE}' records", _START_OVER)
        try:
            with np.load(npz, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as e:
            raise self._damaged(npz, f"not a readable .npz ({type(e).__name__}: {e})") from None
        if like is not None:
            want = {k: (tuple(v.shape), v.detach().cpu().numpy().dtype) for k, v in like.items()}
            got = {k: (a.shape, a.dtype) for k, a in arrays.items()}
            if got != want:
                diff = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
                raise self._damaged(npz, "its arrays do not fit the network being tuned (differ: "
                                         + ", ".join(f"{k} {got.get(k, ('missing',))[0]} vs "
                                                     f"{want.get(k, ('absent',))[0]}"
                                                     for k in diff[:3]) + ")")
        bad = [k for k, a in arrays.items() if a.dtype.kind == "f" and not np.all(np.isfinite(a))]
        if bad:
            raise self._damaged(npz, f"'{bad[0]}' holds NaN or infinite values")
        return {k: torch.from_numpy(a.copy()) for k, a in arrays.items()}, record

    def _damaged(self, path: Path, what: str) -> ArtifactError:
        return ArtifactError(f"cannot resume: checkpoint '{path}' is damaged: {what}", _START_OVER)
