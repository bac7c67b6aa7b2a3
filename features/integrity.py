"""Files written whole and checked when read: atomic writes, digests and settings keys.

Every file tlearn writes (stores, models, sidecars, reports, checkpoints,
downloads) goes through :func:`atomic_write` or :func:`atomic_write_text`, so a
crash at any moment leaves either the old file or the new one at the final
path, never a mixture. :func:`settings_key` is the one way a set of settings
becomes the key that decides whether earlier work can be reused or resumed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from features.errors import UserInputError


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def bytes_digest(data: bytes, algorithm: str = "sha256") -> str:
    """Hex digest of bytes already in memory."""
    return hashlib.new(algorithm, data).hexdigest()


def settings_key(payload: Any) -> str:
    """SHA-256 of the canonical JSON of ``payload`` (sorted keys; non-JSON values as str)."""
    text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def fsync_directory(directory: str | os.PathLike) -> None:
    """Make a rename inside ``directory`` durable (no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _read_umask() -> int:
    # Linux says it without changing it; elsewhere it can only be read by setting it
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Read once, at import (in the main thread): os.umask can only be read by setting it.
_UMASK = _read_umask()


def _new_file_mode(path: Path) -> int:
    """The mode a plain ``open(path, "w")`` would give: the replaced file's, else umask's."""
    try:
        return path.stat().st_mode & 0o777  # never setuid/setgid/sticky, as open() does
    except OSError:
        return 0o666 & ~_UMASK


def check_output_path(path: str | os.PathLike, option: str = "--out") -> None:
    """Refuse, in one line, an output path that can never be written as a file.

    A folder at ``path`` (a rename would fail at the very end, after all the work)
    or a file where one of its parent folders should be.
    """
    path = Path(path)
    if path.is_dir():
        raise UserInputError(f"{option} {path} is a folder; pass the path of a file "
                             f"to write, not a folder")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserInputError(f"{option} {path}: {parent} is a file, not a folder; "
                                     f"choose another {option}")
            return


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file a run writing ``path`` holds: ``<path>.lock``."""
    path = Path(path)
    return path.with_name(path.name + ".lock")


@contextlib.contextmanager
def output_lock(path: str | os.PathLike, option: str = "--out") -> Iterator[Path]:
    """Hold ``<path>.lock`` while this process writes ``path`` (and its ``.partial``).

    A second run on the same output is refused at once with one line, instead of
    both writing one partial file; the lock goes with the process however it ends
    (an advisory ``flock``), so a killed run never blocks the next one.
    """
    lock = lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserInputError(
                f"another tlearn run is writing {path} (it holds {lock}); wait for it to "
                f"finish, or choose another {option}") from None
        # The holder before us may have removed the file between our open and our lock:
        # then we hold a lock nobody else can see, and must take the file that is there.
        try:
            here = os.stat(lock)
            mine = os.fstat(fd)
            if (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield lock
    finally:
        Path(lock).unlink(missing_ok=True)
        os.close(fd)


def _new_partial_file(tmp: str, mode: int) -> None:
    """Create ``tmp`` exclusively, replacing only a regular file an interrupted run left.

    Never follows a link at ``tmp`` (writing through it would replace another
    file's content and mode) and never opens a FIFO or device found there.
    """
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        if not stat.S_ISREG(os.lstat(tmp).st_mode):
            raise UserInputError(
                f"{tmp} exists and is not a file tlearn left (a link, folder or special file); "
                "remove it or choose another --out") from None
        os.unlink(tmp)  # left by an interrupted run: the caller holds the output's lock
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], *,
                 suffix: str = ".tmp", partial: bool = False) -> Path:
    """Create or replace ``path`` atomically: ``write(tmp)`` fills a temporary file beside it.

    The temporary file lives in the same folder (so the final ``os.replace`` is a
    rename on one file system), is flushed to disk before the rename, and is
    removed if ``write`` fails. ``suffix`` keeps an extension some writers insist
    on (Keras wants ``.keras`` or ``.weights.h5``). With ``partial=True`` the
    temporary file is the visible ``<path>.partial`` (long writes a user may watch),
    created exclusively under :func:`output_lock`.
    The file gets the mode a plain ``open`` would give it (the umask's, or the
    replaced file's), not the owner-only mode of a private temporary file.
    An ``OSError`` without a file name (a full disk met by ``write``) gets ``path``'s.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        if partial:
            stack.enter_context(output_lock(path))
            tmp = str(path.with_name(path.name + ".partial"))
            _new_partial_file(tmp, _new_file_mode(path))
        else:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
            try:
                os.fchmod(fd, _new_file_mode(path))
            finally:
                os.close(fd)
        try:
            write(tmp)
            publish_file(tmp, path)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            if exc.filename is None and exc.errno is not None:
                raise OSError(exc.errno, exc.strerror, str(path)) from exc
            raise
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return path


def publish_file(finished: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Move a fully written file into place: flushed to disk, renamed, rename made durable.

    The last step of every atomic write, also used by writers that fill their own
    ``.partial`` file over a long run (the feature store, downloads).
    """
    path = Path(path)
    with open(finished, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(finished, path)
    fsync_directory(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(data, indent=2, default=str))


# -- folders written whole ----------------------------------------------------------------------

STAGING_MARKER = ".tlearn-staging"


def is_staging_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a staging folder tlearn made (a real folder with its marker)."""
    path = Path(path)
    return path.is_dir() and not path.is_symlink() and (path / STAGING_MARKER).is_file()


def new_staging_dir(path: str | os.PathLike) -> Path:
    """An empty folder at ``path``, marked as tlearn's staging folder.

    A staging folder an interrupted run left (it carries the marker) is replaced;
    anything else at ``path`` is never touched: the caller must have refused it
    (see :func:`is_staging_dir`). Raises ``FileExistsError`` if it did not.
    """
    import shutil

    path = Path(path)
    if path.exists() or path.is_symlink():
        if not is_staging_dir(path):
            raise FileExistsError(f"{path} exists and is not a tlearn staging folder")
        shutil.rmtree(path)
    path.mkdir(parents=True)
    (path / STAGING_MARKER).touch()
    return path


def publish_staging_dir(staging: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Rename a finished staging folder to ``dest`` (which must not exist) and unmark it."""
    staging, dest = Path(staging), Path(dest)
    os.replace(staging, dest)
    (dest / STAGING_MARKER).unlink(missing_ok=True)
    fsync_directory(dest.parent)
    return dest
