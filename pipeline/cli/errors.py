"""How a command fails: a user mistake is one ``error:`` line and exit code 2, never a traceback."""

from __future__ import annotations

import errno
import functools
import os
from pathlib import Path

import typer
from rich.markup import escape

from features.devices import import_keras_quietly
from features.errors import UserInputError
from pipeline.cli.output import err_console


def fail(message: str, code: int = 2) -> None:
    """Print ``error: message`` on stderr and end the command with exit code ``code``."""
    # escape: a message may hold brackets (pip install 'tlearn[openvino]') that rich
    # would otherwise take for markup and drop.
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False,
                      soft_wrap=True)
    raise typer.Exit(code)


def _permission_line(exc: OSError) -> str | None:
    """One line for a path the user cannot read or write (a read-only output folder...).

    Any command can meet one, in any of its writers, so it is said here once. What was
    being written stays unpublished: writers fill temporary or ``.partial`` files
    that only a finished run renames into place.
    """
    if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS) or not exc.filename:
        return None
    path = Path(os.fsdecode(exc.filename))
    if exc.errno != errno.EROFS and path.exists() and not os.access(path, os.R_OK):
        return f"cannot read {path}: permission denied; make it readable"
    folder = path if path.is_dir() else path.parent
    why = "is on a read-only file system" if exc.errno == errno.EROFS else "is not writable"
    return (f"cannot write to {folder}: the folder {why}; choose another output folder "
            "or make it writable")


# Out of space is for the user to fix, like a folder they cannot write: one line.
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _os_error_line(exc: OSError) -> str | None:
    """One line for an operating-system error the user can fix, None for a fault."""
    if exc.errno in _DISK_FULL and exc.filename is not None:
        return (f"{os.fsdecode(exc.filename)}: {exc.strerror}; free some space and run the "
                "command again")
    return _permission_line(exc)


def user_errors(func):
    """Turn a user mistake into one clear line and exit code 2, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except UserInputError as exc:
            fail(str(exc))
        except OSError as exc:
            line = _os_error_line(exc)
            if line is None:
                raise
            fail(line)
        except KeyboardInterrupt:
            fail("interrupted; finished work is saved and a rerun of the same command "
                  "resumes where it stopped", code=130)

    return wrapper


def uses_keras(func):
    """For commands that run a network: import Keras on its backend first (TensorFlow
    without its start-up noise).

    Commands that only read stores, reports or sidecars skip the import (seconds), and so
    does extract: an up-to-date store is answered before any network is built, and the
    library imports the backend just as quietly when one is. Under the user's decorator
    :func:`user_errors`, a missing backend is one line.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        import_keras_quietly()
        return func(*args, **kwargs)

    return wrapper

