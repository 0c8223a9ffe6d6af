"""Reading .npz data files: ``x`` (N, *input shape) floats and ``y`` (N,) labels or targets.

Every way a file can fail to fit the model gets one DataError naming the file, what was
found, and what was expected.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass

import numpy as np

from .errors import DataError


@dataclass
class Dataset:
    """Inputs and (optional) labels or regression targets of one .npz file."""

    x: np.ndarray
    y: np.ndarray | None
    path: str

    @property
    def is_classification(self) -> bool:
        return self.y is not None and np.issubdtype(self.y.dtype, np.integer)

    def check_targets(self, out_shape: tuple[int, ...], validation: bool = False) -> None:
        """Labels must index the model's outputs; regression targets must have its shape.
        ``validation``: the scheduler compares accuracies on it, so it needs two classes."""
        if self.is_classification:
            n_out = int(np.prod(out_shape))
            y = self.y
            if y.ndim != 1:
                raise DataError(f"'{self.path}': labels y have shape {y.shape}, expected (N,)")
            if y.min() < 0 or y.max() >= n_out:
                raise DataError(f"'{self.path}': labels span {int(y.min())}..{int(y.max())}, but the model "
                                f"has {n_out} outputs", "labels must be class indices 0..outputs-1")
            if validation and len(np.unique(y)) < 2:
                raise DataError(f"'{self.path}': the validation set holds only one class ({int(y[0])})",
                                "validate on a sample of every class (e.g. a stratified split)")
        elif tuple(self.y.shape[1:]) != tuple(out_shape):
            raise DataError(f"'{self.path}': targets y have shape {self.y.shape}, the model outputs "
                            f"(N, {', '.join(map(str, out_shape))})")

    def score(self, pred: np.ndarray) -> dict[str, float]:
        """How well predictions ``pred`` (N, outputs) match: accuracy for labels, MSE and
        PSNR for regression targets; empty without labels."""
        if self.y is None:
            return {}
        if self.is_classification:
            return {"accuracy": float((pred.reshape(len(pred), -1).argmax(1) == self.y).mean())}
        err = pred.reshape(self.y.shape) - self.y
        mse = float(np.mean(err ** 2))
        peak = float(self.y.max() - self.y.min())  # the targets' range (1 for images in [0, 1])
        psnr = 10.0 * np.log10(peak ** 2 / mse) if mse > 0 and peak > 0 else float("inf")
        return {"mse": mse, "psnr": float(psnr)}


def load_npz(path: str | os.PathLike, input_shape: tuple[int, ...], need_labels: bool = True) -> Dataset:
    """Load and check a data file against the model's per-sample input shape."""
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise DataError(f"data file '{p}' does not exist", "check the path")
    try:
        with np.load(p, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"'{p}' is not a readable .npz file ({e})",
                        "write it with numpy.savez(path, x=..., y=...) (no object arrays)") from None
    if "x" not in arrays:
        raise DataError(f"'{p}' has no array 'x' (found: {', '.join(sorted(arrays)) or 'none'})",
                        "save the inputs under the name x: numpy.savez(path, x=inputs, y=labels)")
    x = arrays["x"]
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"'{p}': x has dtype {x.dtype}, expected float32 in the model's input layout",
                        "convert it, e.g. x.astype(numpy.float32), scaled as the model was trained")
    if x.ndim != len(input_shape) + 1 or tuple(x.shape[1:]) != tuple(input_shape):
        raise DataError(f"'{p}': x has shape {x.shape}, but the model takes (N, "
                        f"{', '.join(map(str, input_shape))})",
                        "reshape or transpose the data to the model's input layout")
    if x.shape[0] == 0:
        raise DataError(f"'{p}': x holds no samples")
    if not np.all(np.isfinite(x)):
        raise DataError(f"'{p}': x contains NaN or infinite values", "clean the data first")
    y = arrays.get("y")
    if y is None:
        if need_labels:
            raise DataError(f"'{p}' has no array 'y' (labels)", "save labels too: numpy.savez(path, x=..., y=...)")
    else:
        if y.shape[:1] != x.shape[:1]:
            raise DataError(f"'{p}': {x.shape[0]} inputs but {y.shape[0] if y.ndim else 0} labels in y")
        if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
            raise DataError(f"'{p}': y has dtype {y.dtype}; expected integer labels or float targets")
        if np.issubdtype(y.dtype, np.floating) and not np.all(np.isfinite(y)):
            raise DataError(f"'{p}': y contains NaN or infinite values")
    return Dataset(x=x.astype(np.float32, copy=False), y=y, path=p)
