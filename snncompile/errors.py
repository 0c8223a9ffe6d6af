"""Errors a user can cause, each with a message written for people.

Every error names what is wrong and, in ``hint``, what to do about it. The CLI prints
``str(err)`` and exits with ``err.exit_code``; library callers can catch
:class:`SnnCompileError` and read the same fields.
"""

from __future__ import annotations


class SnnCompileError(Exception):
    """Base class of every error a user can cause (bad model, bad data, bad option)."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  fix: {self.hint}"


class ModelError(SnnCompileError):
    """The ONNX file cannot be read, is invalid, or uses something we cannot convert."""

    exit_code = 3


class UnsupportedOpError(ModelError):
    """One or more ONNX nodes have no spiking equivalent; ``problems`` lists each of them."""

    def __init__(self, message: str, problems: list[str], hint: str | None = None):
        super().__init__(message, hint)
        self.problems = problems


class DataError(SnnCompileError):
    """A data file (.npz) is missing, malformed, or does not fit the model."""

    exit_code = 4


class ArtifactError(SnnCompileError):
    """A compiled output directory is missing, incomplete, or from an incompatible version."""

    exit_code = 5


class UsageError(SnnCompileError):
    """An option value or combination of options that cannot work."""

    exit_code = 2
