"""The Fashion-MNIST example's IDX reader, on synthetic IDX files (the Debian package is not needed)."""

from __future__ import annotations

import gzip
import importlib.util
import struct
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("fmnist_train", ROOT / "examples/fashion_mnist/train.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def write_idx(path: Path, arr: np.ndarray, type_code: int = 0x08, compress: bool = True) -> None:
    """IDX as the format defines it: 0, 0, type, ndim, big-endian dims, row-major data."""
    head = bytes([0, 0, type_code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    raw = head + arr.tobytes()
    (gzip.open if compress else open)(path, "wb").write(raw)


def test_read_idx_round_trips_images_and_labels(example, tmp_path, rng):
    imgs = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 7, dtype=np.uint8)
    write_idx(tmp_path / "i.gz", imgs)
    write_idx(tmp_path / "l", labels, compress=False)
    np.testing.assert_array_equal(example.read_idx(tmp_path / "i.gz"), imgs)
    np.testing.assert_array_equal(example.read_idx(tmp_path / "l"), labels)
    big = rng.integers(-2**31, 2**31 - 1, (3, 2)).astype(">i4")  # a wider type, big-endian
    write_idx(tmp_path / "w.gz", big, type_code=0x0C)
    np.testing.assert_array_equal(example.read_idx(tmp_path / "w.gz"), big)


@pytest.mark.parametrize("raw, message", [
    (b"\x01\x00\x08\x01" + struct.pack(">I", 3) + b"abc", "not an IDX file"),
    (b"\x00\x00\x08\x03" + struct.pack(">I", 3), "truncated header"),
    (b"\x00\x00\x08\x02" + struct.pack(">2I", 2, 3) + b"abcde", "file holds 5"),
])
def test_read_idx_rejects_broken_files(example, tmp_path, raw, message):
    (tmp_path / "bad.gz").write_bytes(gzip.compress(raw))
    with pytest.raises(example.IdxError, match=message):
        example.read_idx(tmp_path / "bad.gz")


def test_load_scales_pairs_and_names_missing_files(example, tmp_path, rng):
    for split, n in (("train", 12), ("test", 5)):
        img, lab = example.FILES[split]
        write_idx(tmp_path / img, rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(tmp_path / lab, (np.arange(n) % 10).astype(np.uint8))
    data = example.load_fashion_mnist(tmp_path)
    x, y = data["train"]
    assert x.shape == (12, 1, 28, 28) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    assert y.dtype == np.int64 and list(y[:3]) == [0, 1, 2] and len(data["test"][1]) == 5
    write_idx(tmp_path / example.FILES["test"][1], np.zeros(4, np.uint8))  # 5 images, 4 labels
    with pytest.raises(example.IdxError, match="do not pair up"):
        example.load_fashion_mnist(tmp_path)
    (tmp_path / example.FILES["train"][0]).unlink()
    with pytest.raises(example.IdxError, match="dataset-fashion-mnist"):
        example.load_fashion_mnist(tmp_path)
