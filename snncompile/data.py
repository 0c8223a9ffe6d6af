"""Reading .npz data files: ``x`` (N, *input shape) floats and ``y`` (N,) labels or targets.

Every way a file can fail to fit the model gets one DataError naming the file, what was
found, and what was expected.
"""

from __future__ import annotations

import os
import re
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
                raise DataError(f"'{self.path}': labels y have shape {y.shape}, expected (N,): one "
                                "class index per sample", _LABEL_HINT)
            if y.min() < 0 or y.max() >= n_out:
                raise DataError(f"'{self.path}': labels span {int(y.min())}..{int(y.max())}, but the model "
                                f"has {n_out} outputs (classes 0..{n_out - 1})",
                                "labels must be class indices 0..outputs-1 (is this data for "
                                "another model, or are labels counted from 1?)")
            if validation and len(np.unique(y)) < 2:
                raise DataError(f"'{self.path}': the validation set holds only one class ({int(y[0])})",
                                "validate on a sample of every class (e.g. a stratified split)")
        elif tuple(self.y.shape[1:]) != tuple(out_shape):
            raise DataError(f"'{self.path}': targets y have shape {self.y.shape} ({self.y.dtype}), the "
                            f"model outputs (N, {', '.join(map(str, out_shape))})", _LABEL_HINT)

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


def load_npz(path: str | os.PathLike, input_shape: tuple[int, ...], need_labels: bool = True,
             out_shape: tuple[int, ...] | None = None) -> Dataset:
    """Load and check a data file against the model's per-sample input shape and, given
    ``out_shape`` (the model's per-sample output), its labels or targets against the outputs.

    The file is checked before anything is allocated: it must be a zip archive (what
    numpy.savez writes), x and y plain (never pickled) arrays whose declared size fits
    :func:`data_limit`; other arrays in the file are not read."""
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise DataError(f"data file '{p}' does not exist", "check the path")
    _sniff(p)
    try:
        with zipfile.ZipFile(p) as z:
            members = {n[:-4]: z.getinfo(n) for n in z.namelist() if n.endswith(".npy")}
            wanted = [k for k in ("x", "y") if k in members]
            _check_declared(p, z, [members[k] for k in wanted])
            with np.load(p, allow_pickle=False) as f:
                arrays = {k: f[k] for k in wanted}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, KeyError) as e:
        raise DataError(f"'{p}' is not a readable .npz file ({e})", _SAVEZ_HINT) from None
    if "x" not in arrays:
        raise DataError(f"'{p}' has no array 'x' (found: {', '.join(sorted(members)) or 'none'})",
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
        raise DataError(f"'{p}': x holds no samples", "save at least one sample")
    if not np.all(np.isfinite(x)):
        raise DataError(f"'{p}': x contains NaN or infinite values", "clean the data first")
    y = arrays.get("y")
    if y is None:
        if need_labels:
            raise DataError(f"'{p}' has no array 'y' (labels)", "save labels too: numpy.savez(path, x=..., y=...)")
    else:
        if y.shape[:1] != x.shape[:1]:
            raise DataError(f"'{p}': {x.shape[0]} inputs but {y.shape[0] if y.ndim else 0} labels in y",
                            "save one label (or target) per sample of x, in the same order")
        if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
            raise DataError(f"'{p}': y has dtype {y.dtype}; expected integer labels or float targets",
                            _LABEL_HINT)
        if np.issubdtype(y.dtype, np.floating) and not np.all(np.isfinite(y)):
            raise DataError(f"'{p}': y contains NaN or infinite values", "clean the data first")
    data = Dataset(x=x.astype(np.float32, copy=False), y=y, path=p)
    if y is not None and out_shape is not None:
        data.check_targets(out_shape)
    return data


_SAVEZ_HINT = "write it with numpy.savez(path, x=..., y=...) (plain numeric arrays, no objects)"
_LABEL_HINT = ("classification: y holds one integer class index 0..outputs-1 per sample, "
               "e.g. y.astype(numpy.int64); regression: float targets of the output's shape")
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_KINDS = ((b"\x93NUMPY", "a single .npy array (numpy.save)"),
          (b"\x80", "a Python pickle"),
          (b"\x89HDF", "an HDF5 file"))
# A member inflating more than this many times is refused when it is also larger than
# _BOMB_MIN_BYTES: deflate cannot exceed ~1032x, so this ratio means a file of (nearly) one
# repeated byte, which no real data set is.
_BOMB_RATIO = 1000
_BOMB_MIN_BYTES = 64 << 20
LIMIT_ENV = "SNNCOMPILE_DATA_LIMIT"
_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}


def data_limit() -> int:
    """The largest data file (the declared size of its x and y, in bytes) that is loaded:
    half the memory available now (simulation needs room beside the data), or the value
    of the environment variable SNNCOMPILE_DATA_LIMIT (bytes, or with a K/M/G/T suffix)."""
    env = os.environ.get(LIMIT_ENV, "").strip()
    if env:
        m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?", env, flags=re.I)
        if not m:
            raise DataError(f"{LIMIT_ENV}={env!r} is not a size", "give bytes, e.g. 8G or 500M")
        return int(float(m.group(1)) * 1024 ** " KMGT".index(m.group(2).upper() or " "))
    return _available_memory() // 2


def _available_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 << 30  # unknown platform: assume a modest machine


def _sniff(p: str) -> None:
    """Refuse files that are not zip archives, naming what they are when we can tell."""
    with open(p, "rb") as f:
        head = f.read(8)
    if head.startswith(_ZIP_MAGIC):
        return
    what = next((k for magic, k in _KINDS if head.startswith(magic)),
                "empty" if not head else "not a zip archive")
    raise DataError(f"'{p}' is not a readable .npz file: it is {what}", "save the data as an .npz archive: "
                    "numpy.savez(path, x=inputs, y=labels) (never pickled objects)")


def _check_declared(p: str, z: zipfile.ZipFile, infos: list[zipfile.ZipInfo]) -> None:
    """Read each array's .npy header (a few bytes) and refuse object arrays, sizes beyond
    :func:`data_limit`, and members whose stored size cannot hold what they declare."""
    total = 0
    for info in infos:
        name = info.filename[:-4]
        with z.open(info) as f:
            version = np.lib.format.read_magic(f)
            read_header = _HEADER_READERS.get(version)
            if read_header is None:
                raise DataError(f"'{p}': array '{name}' is in .npy format {version}, which holds "
                                "structured records, not plain numbers", _SAVEZ_HINT)
            shape, _, dtype = read_header(f)
        if dtype.hasobject:
            raise DataError(f"'{p}': array '{name}' holds Python objects ({dtype}), which would "
                            "have to be unpickled; snncompile never loads pickles", _SAVEZ_HINT)
        size = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if info.file_size < size:
            raise DataError(f"'{p}': array '{name}' declares shape {tuple(shape)} ({_gb(size)}) "
                            f"but the file holds only {_gb(info.file_size)} of it: it is "
                            "truncated or damaged", "write the file again with numpy.savez")
        if size > _BOMB_MIN_BYTES and size > _BOMB_RATIO * max(info.compress_size, 1):
            raise DataError(f"'{p}': array '{name}' inflates from {_gb(info.compress_size)} to "
                            f"{_gb(size)} (more than {_BOMB_RATIO}x): this is not real data",
                            "check where the file came from and write it with numpy.savez")
        total += size
    limit = data_limit()
    if total > limit:
        raise DataError(f"'{p}': x and y declare {_gb(total)}, more than the limit of "
                        f"{_gb(limit)} (half the memory available now)",
                        f"use a smaller sample of the data, or set {LIMIT_ENV} (e.g. 64G) if "
                        "the machine can hold it")


def _gb(n: int) -> str:
    return f"{n / 2 ** 30:.3g} GiB" if n >= 2 ** 30 else f"{n / 2 ** 20:.3g} MiB"
