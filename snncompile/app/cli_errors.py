"""How the command line fails: its exit codes, the one message for each kind of failure
(click's own parse errors included, an OSError the environment caused, our own bug), and
the option types that range-check numbers as the command line is read.

Exit codes never collide: 1 is only `check`'s "a check failed" (Python itself exits 1 on an
uncaught exception, which the CLI never lets through: our bugs exit 70), 2..7 are the
SnnCompileError types, 8 is `run`'s "not bit-exact", 130 an interrupt. docs/user-guide.md
has the table.
"""

from __future__ import annotations

import errno
import math
import os
import sys
from typing import Any, Callable, NoReturn

import click

from .. import __version__
from ..errors import UsageError

# Exit codes (docs/user-guide.md, "Exit codes"); the SnnCompileError types carry 2..7.
EXIT_CHECK_FAILED = 1     # `check`: a limit or baseline check failed (CI reads this)
EXIT_NOT_BIT_EXACT = 8    # `run`: the backend's spikes or outputs differ from the simulator
EXIT_INTERNAL = 70        # a bug in snncompile (EX_SOFTWARE): never 1, which Python gives a crash
EXIT_INTERRUPTED = 130
TRACEBACK_ENV = "SNNCOMPILE_TRACEBACK"  # set to 1: an internal error shows its traceback
# OSErrors the environment causes (a full or read-only disk, a path that cannot be
# written): the user can fix them. Any other OSError is treated as our bug.
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES,
                       errno.EPERM, errno.ENAMETOOLONG, errno.ENOENT, errno.ENOTDIR, errno.EISDIR,
                       errno.ELOOP, errno.EBUSY, errno.EXDEV, errno.EMFILE, errno.ENFILE}


# The parameter of each command that names what it writes (for an OSError without a path).
_OUTPUT_PARAM = {"convert": "out", "report": "report_dir", "baseline": "path", "export": "path",
                 "check": "junit"}


def os_error_for(e: OSError, command: str, params: dict[str, Any]) -> UsageError:
    """The UsageError for an OSError that ``command`` (run with ``params``) met, when the
    environment caused it (see _ENVIRONMENT_ERRNOS); any other OSError is our bug and exits
    as an internal error."""
    if e.errno not in _ENVIRONMENT_ERRNOS or (e.errno == errno.ENOENT and not e.filename):
        internal_error(e)
    return _os_error(e, params.get(_OUTPUT_PARAM.get(command, "")))


def _os_error(e: OSError, output: str | None = None) -> UsageError:
    """A UsageError naming the path an OSError is about (else the command's output) and
    what to do."""
    path = e.filename or output
    if output and e.filename and os.path.basename(str(e.filename)).startswith(
            f".{os.path.basename(os.path.normpath(output))}."):
        path = output  # the temporary sibling an output is written through: name the output
    where = f"'{path}'" if path else "an output file"
    folder = os.path.dirname(os.path.abspath(path)) if path else None
    reason = e.strerror or errno.errorcode.get(e.errno or 0, str(e))
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        fix = "free disk space (or raise the file-size limit, ulimit -f), or write elsewhere"
    elif e.errno == errno.ENAMETOOLONG:
        fix = "choose a shorter file name (at most 255 characters per path component)"
    else:
        fix = (f"check that the folder '{folder}' exists and that you may write there, or choose "
               "another path" if folder else "choose another output path")
    return UsageError(f"cannot {'access' if e.filename else 'write'} {where}: {reason}", fix)


def internal_error(e: BaseException) -> NoReturn:
    """Our bug: one line saying so and where, exit EXIT_INTERNAL; the traceback only on
    request (SNNCOMPILE_TRACEBACK=1), since a user can do nothing with it but report it."""
    if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
        raise e
    import traceback

    frame = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
    where = f" at {os.path.basename(frame.filename)}:{frame.lineno}" if frame else ""
    text = " ".join(str(e).split())[:300]
    click.echo(f"internal error: {type(e).__name__}{': ' + text if text else ''}{where}; this is a "
               f"bug in snncompile {__version__}, please report it with the command you ran "
               f"({TRACEBACK_ENV}=1 shows the traceback)", err=True)
    sys.exit(EXIT_INTERNAL)


_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())  # click >= 8.2


class Cli(click.Group):
    """The command group, printing click's own errors (a mistyped option, a value out of
    range) as ours: one "error:" line and one "fix:" line, exit 2."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.Abort:  # Ctrl-C before a command ran
            click.echo("interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except click.ClickException as e:
            if isinstance(e, _NO_ARGS_IS_HELP):  # `snncompile` alone: the help, as click shows it
                e.show()
                sys.exit(e.exit_code)
            ctx = getattr(e, "ctx", None)
            where = ctx.command_path if ctx is not None else "snncompile"
            click.echo(f"error: {e.format_message()}\n  fix: see '{where} --help'", err=True)
            sys.exit(max(e.exit_code, 2))  # click's base exception says 1, which is check's
        sys.exit(rv if isinstance(rv, int) else 0)


class Real(click.FloatRange):
    """A float option in a range that is also finite (click's FloatRange lets NaN pass)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        v = super().convert(value, param, ctx)
        if v is not None and not math.isfinite(v):
            self.fail(f"{v} is not a finite number", param, ctx)
        return v


def number_or_auto(kind: type, ok: Callable[[Any], bool], what: str) -> Callable:
    """An option callback that takes 'auto' or a number of ``kind`` for which ``ok`` holds,
    checked as the command line is read (the value stays text for the command)."""
    def check(ctx: click.Context, param: click.Parameter, text: str) -> str:
        if text.strip().lower() != "auto":
            try:
                value = kind(text)
            except ValueError:
                value = math.nan
            if not ok(value):
                raise click.BadParameter(f"{text!r} is neither {what} nor auto", ctx, param)
        return text
    return check
