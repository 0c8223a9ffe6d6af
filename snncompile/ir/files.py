"""Reading the files of an artifact as untrusted data: one error, naming the file, for
anything damaged.

An artifact is a folder users pass around; any file in it may be truncated, edited or
swapped. Every reader of an artifact file (the IR, compile.json, a backend's own files)
goes through :func:`read_json` and :func:`read_npz`, which accept only what they can
vouch for (UTF-8 JSON of bounded nesting whose top level has the expected type; an .npz
of plain arrays, never pickles), and :func:`artifact_file`, under which whatever a
malformed file makes the interpreting code raise (a missing key, a wrong type) becomes
one :class:`ArtifactError` naming the file, with the fix.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import ArtifactError

MAX_DEPTH = 32        # deeper JSON is no file snncompile writes (ir.json nests 4 levels)
REWRITE = "re-run 'snncompile convert' to write the artifact again"


def _depth(value: Any) -> int:
    """Nesting depth of a JSON value, without recursion (a deep file must not overflow)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > MAX_DEPTH:
            return deepest
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)
    return deepest


def read_json(path: str | os.PathLike, expect: type = dict, hint: str = REWRITE) -> Any:
    """The JSON value in ``path``, whose top level must be an ``expect`` (dict by default);
    ArtifactError for a missing file, non-UTF-8 bytes, invalid JSON, NaN/Infinity
    literals, nesting deeper than :data:`MAX_DEPTH`, or a top level of another type."""
    p = Path(path)

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON number")

    try:
        text = p.read_bytes().decode("utf-8")
        value = json.loads(text, parse_constant=no_constant)
    except FileNotFoundError:
        raise ArtifactError(f"{p} is missing", hint) from None
    except OSError as e:
        raise ArtifactError(f"cannot read {p}: {e.strerror}", hint) from None
    except UnicodeDecodeError as e:
        raise ArtifactError(f"{p} is not UTF-8 text (byte {e.start})", hint) from None
    except RecursionError:
        raise ArtifactError(f"{p} nests deeper than {MAX_DEPTH} levels", hint) from None
    except ValueError as e:
        raise ArtifactError(f"{p} is not valid JSON ({e})", hint) from None
    if _depth(value) > MAX_DEPTH:
        raise ArtifactError(f"{p} nests deeper than {MAX_DEPTH} levels", hint)
    if not isinstance(value, expect):
        raise ArtifactError(f"{p} holds a JSON {type(value).__name__}, expected "
                            f"{'an object' if expect is dict else expect.__name__}", hint)
    return value


def read_npz(path: str | os.PathLike, hint: str = REWRITE) -> dict[str, np.ndarray]:
    """Every array of the .npz ``path`` (loaded without pickle); ArtifactError for a
    missing, truncated, empty or non-.npz file, or an array of objects."""
    p = Path(path)
    try:
        if p.stat().st_size == 0:
            raise ArtifactError(f"{p} is empty", hint)
        npz = np.load(p, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise ArtifactError(f"{p} is a single .npy array, not an .npz archive", hint)
        with npz:
            arrays = {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise ArtifactError(f"{p} is missing", hint) from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise ArtifactError(f"{p} is damaged or not an .npz archive ({type(e).__name__}: {e})",
                            hint) from None
    for k, a in arrays.items():
        if a.dtype.kind not in "biuf":
            raise ArtifactError(f"{p}: array '{k}' has dtype {a.dtype}, expected numbers", hint)
    return arrays


@contextlib.contextmanager
def artifact_file(path: str | os.PathLike, hint: str = REWRITE) -> Iterator[None]:
    """Interpret the contents of artifact file ``path`` inside this block: a missing key,
    a value of the wrong type or shape (KeyError, IndexError, TypeError, ValueError) is the
    file's fault, not the reader's, and becomes an ArtifactError naming the file."""
    try:
        yield
    except ArtifactError:
        raise
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, ArithmeticError,
            RecursionError) as e:
        what = f"no {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
        raise ArtifactError(f"{path} is damaged or was not written by this version ({what})",
                            hint) from None


def sha256_file(path: str | os.PathLike) -> str:
    """The hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
