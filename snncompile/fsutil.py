"""Outputs that appear whole or not at all, and never at the cost of a user's files.

An output directory OUT is *claimed* before any work: an exclusive lock on a file beside it
(``.OUT.lock``, :func:`claim_output`) refuses a second writer at once, and is released by
the kernel even when the process is killed. OUT is written into a temporary sibling
(``.OUT.snncompile-*.tmp``) renamed into place when complete; an existing OUT is replaced
only when asked (``--force``), only when it is recognizably one of ours (the caller's
``is_ours``, e.g. an artifact's manifest), never when it holds an input of the run and never
when it is the current folder or one of its parents (:func:`check_replaceable`). Temporary
siblings are removed on every exit Python sees (errors, SIGINT, SIGTERM mapped to it by
the CLI); those a killed run left behind are removed by the next run that claims OUT.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .errors import UsageError

TMP_TAG = ".snncompile-"


def _sibling(target: Path, suffix: str) -> str:
    return f".{glob.escape(target.name)}{TMP_TAG}*{suffix}"


def _resolved(p: str | os.PathLike) -> Path:
    return Path(os.path.abspath(p)).resolve()


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_replaceable(target: str | os.PathLike, force: bool,
                      is_ours: Callable[[Path], bool] | None = None,
                      inputs: Iterable[str | os.PathLike | None] = ()) -> None:
    """Raise UsageError unless writing ``target`` can lose nothing of the user's: it must
    not be the current folder or a parent of it, nor hold an input of the run; where it
    exists it is replaced only with ``force`` and only when empty or ``is_ours``."""
    t = _resolved(target)
    if _inside(_resolved(os.getcwd()), t):
        raise UsageError(f"output '{target}' is the current folder or one of its parents: replacing "
                         "it would delete the folder you are working in",
                         "choose a new folder for -o, e.g. -o build")
    for p in inputs:
        if p and _inside(_resolved(p), t):
            raise UsageError(f"output '{target}' holds '{p}', an input of this run: replacing it "
                             "would delete that input", "choose a new folder for -o")
    if not os.path.lexists(target):
        return
    if not force:
        raise UsageError(f"output directory '{target}' already exists",
                         "choose another -o, or pass --force to replace it")
    if Path(target).is_symlink():
        raise UsageError(f"output '{target}' is a symbolic link: --force replaces only a folder "
                         "snncompile wrote", "choose another -o")
    if t.is_dir() and (not any(t.iterdir()) or (is_ours and is_ours(t))):
        return
    raise UsageError(f"'{target}' exists and is not an snncompile output (no manifest of ours in it): "
                     "--force replaces only what snncompile wrote",
                     "choose another -o, or move that folder away yourself")


def check_file_target(path: str | os.PathLike, force: bool,
                      inputs: Iterable[str | os.PathLike | None] = (), what: str = "output") -> None:
    """Raise UsageError unless one output file may be written at ``path``: not a folder, in
    a folder that exists, not an input of the run nor inside one (a build folder, say), and
    replacing an existing file only with ``force``."""
    t = _resolved(path)
    if t.is_dir():
        raise UsageError(f"'{path}' is a folder: the {what} is one file", "pass a file name for -o")
    if not t.parent.is_dir():
        raise UsageError(f"cannot write '{path}': folder '{t.parent}' does not exist",
                         "create it first, or choose another -o")
    for p in inputs:
        if p and _inside(t, _resolved(p)):
            raise UsageError(f"'{path}' is {'inside ' if t != _resolved(p) else ''}'{p}', an input of "
                             "this run: writing it would damage that input", "choose another -o")
    if os.path.lexists(path) and not force:
        raise UsageError(f"{what} file '{path}' already exists", "choose another -o, or pass --force to replace it")


@contextlib.contextmanager
def claim_output(target: str | os.PathLike) -> Iterator[Path]:
    """Hold the exclusive claim on writing ``target`` (a lock file beside it) for the
    duration of the ``with``; another process claiming it meanwhile gets UsageError. On
    entry, leftovers of runs that were killed while writing ``target`` are cleaned up."""
    target = Path(target)
    parent = _resolved(target).parent
    if not parent.is_dir():
        raise UsageError(f"cannot write '{target}': folder '{parent}' does not exist",
                         "create it first, or choose another -o")
    lock = parent / f".{_resolved(target).name}.lock"
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UsageError(f"cannot write '{target}': {e.strerror} ({lock})",
                             "choose an -o in a folder you can write to") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise UsageError(f"another snncompile process is writing '{target}' (it holds {lock})",
                             "wait for it to finish, or choose another -o") from None
        try:  # the holder before us may have removed the file we opened: lock the current one
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        _clean_leftovers(_resolved(target))
        yield target
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


def _clean_leftovers(target: Path) -> None:
    """Temporary siblings of killed runs (the claim is held, so no live run owns them); a
    previous output moved aside by a run killed before the new one landed is put back."""
    for old in target.parent.glob(_sibling(target, ".old")):
        if not os.path.lexists(target) and (old / "x").exists():
            os.replace(old / "x", target)
        shutil.rmtree(old, ignore_errors=True)
    for tmp in target.parent.glob(_sibling(target, ".tmp")):
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, force: bool = False,
                     is_ours: Callable[[Path], bool] | None = None,
                     inputs: Iterable[str | os.PathLike | None] = (),
                     claimed: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``target``; on success it is renamed to ``target``,
    on any error (or interrupt) it is removed. An existing ``target`` is replaced only as
    :func:`check_replaceable` allows, checked on entry and again, under the claim, at the
    rename (something may have appeared there meanwhile). ``claimed``: the caller already
    holds :func:`claim_output` on ``target``."""
    target = Path(target)
    inputs = tuple(inputs)
    with contextlib.ExitStack() as stack:
        if not claimed:
            stack.enter_context(claim_output(target))
        check_replaceable(target, force, is_ours, inputs)
        parent = _resolved(target).parent
        name = _resolved(target).name
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}{TMP_TAG}", suffix=".tmp", dir=parent))
        try:
            yield tmp
            check_replaceable(target, force, is_ours, inputs)
            _replace_directory(tmp, parent / name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _replace_directory(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target``, moving an existing ``target`` aside first and putting it
    back if the rename fails or is interrupted."""
    if not os.path.lexists(target):
        os.rename(tmp, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}{TMP_TAG}", suffix=".old", dir=target.parent))
    try:
        os.rename(target, old / "x")
        try:
            os.rename(tmp, target)
        except BaseException:
            os.rename(old / "x", target)
            raise
    finally:
        if os.path.lexists(target):  # else the next claim of target puts old/x back
            shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file through a temporary file and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.resolve().parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
