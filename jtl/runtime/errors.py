"""User errors: what went wrong and how to fix it, printed by `jtl` as one line.

Every error a user can cause (a config typo, a missing file, a full disk, a diverged run)
is, or is mapped to, a `UserError`. `jtl.commands.cli.main` prints it as

    jtl: error: WHAT (HINT)

on stderr and exits with status 2; `--debug` or `JTL_DEBUG=1` shows the traceback instead.
Anything else is a bug in jtl: one line too, exit status 1, and the same switch for the
traceback. Subclasses also derive from the builtin type the code raised before (ValueError,
KeyError, FileNotFoundError, ...), so callers that catch those keep working.
"""

from __future__ import annotations

import errno
import pickle

DEBUG_HINT = "run with --debug or JTL_DEBUG=1 for the traceback"


class UserError(Exception):
    """An error the user can fix; `hint` says how (shown in parentheses after the message)."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:  # KeyError would otherwise print the repr of the message
        return self.message


class ConfigError(UserError, KeyError, ValueError):
    """A config key, value or name that does not exist (the message lists the valid ones)."""


class ConfigTypeError(ConfigError, TypeError):
    """A config value of the wrong type (e.g. `--config.total_steps=abc`)."""


class MissingFileError(UserError, FileNotFoundError):
    """A file the user named (config, data, checkpoint) that does not exist."""


class DataError(UserError, ValueError):
    """A data set that cannot be trained on as asked (empty class, too few examples, bad file)."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be read (corrupt, truncated, not a checkpoint)."""


class CheckpointWriteError(UserError, OSError):
    """A checkpoint that could not be written (disk full, read-only); earlier ones are intact."""


class DivergedError(UserError, FloatingPointError):
    """Training produced a non-finite loss or gradient norm; summary.json records where."""

    def __init__(self, message: str, hint: str = "", summary: dict | None = None) -> None:
        super().__init__(message, hint)
        self.summary = summary or {}


def one_line(text: str) -> str:
    """Multi-line messages (key listings) joined with '; ' so the error stays one line."""
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip())


_OS_HINTS = {
    errno.ENOSPC: "free disk space or use a --workdir on another disk",
    errno.EDQUOT: "free disk space or use a --workdir on another disk",
    errno.EROFS: "the file system is read-only: use a writable --workdir",
    errno.EACCES: "no permission: use a --workdir you can write to",
    errno.EPERM: "no permission: use a --workdir you can write to",
    errno.ENOENT: "check the path",
    errno.EISDIR: "expected a file, got a directory",
    errno.ENOTDIR: "a parent of this path is a file, not a directory",
}


def as_user_error(exc: BaseException) -> UserError | None:
    """The `UserError` an exception stands for, or None for a bug (which keeps its type).

    Known user errors from libraries and older jtl code are mapped here, in one place.
    """
    if isinstance(exc, UserError):
        return exc
    name = type(exc).__name__
    if isinstance(exc, pickle.UnpicklingError) or name in (
        "UnsafePickleError",
        "UnidentifiedImageError",
        "ConversionError",
        "CheckpointMismatchError",
        "StudyError",
        "UnknownDatasetError",
        "MissingSourceError",
        "WorkdirConflictError",
        "ChecksumError",
        "SafetensorError",
        "HeaderTooLarge",
    ):
        hint = {
            "UnidentifiedImageError": "pass a PNG, JPEG or other image file pillow can read",
            "MissingSourceError": "fetch it with `jtl data fetch NAME`",
        }.get(name, "")
        return UserError(f"{name}: {exc}" if name.endswith("PickleError") else str(exc), hint)
    if isinstance(exc, OSError) and exc.errno in _OS_HINTS:
        where = exc.filename or ""
        what = exc.strerror or str(exc)
        return UserError(f"{what}: {where}" if where else what, _OS_HINTS[exc.errno])
    return None


def format_error(exc: BaseException) -> tuple[str, int]:
    """(the one line to print, the exit status): 2 for user errors, 1 for bugs."""
    user = as_user_error(exc)
    if user is not None:
        hint = user.hint or DEBUG_HINT
        return f"jtl: error: {one_line(user.message)} ({one_line(hint)})", 2
    text = one_line(str(exc)) or "(no message)"
    return f"jtl: error: internal error: {type(exc).__name__}: {text} ({DEBUG_HINT})", 1
