"""Files written whole and checked when read: atomic writes, digests and settings keys.

Every file tlearn writes (stores, models, sidecars, reports, checkpoints,
downloads) goes through :func:`atomic_write` or :func:`atomic_write_text`, so a
crash at any moment leaves either the old file or the new one at the final
path, never a mixture. :func:`settings_key` is the one way a set of settings
becomes the key that decides whether earlier work can be reused or resumed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


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


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], *,
                 suffix: str = ".tmp", partial: bool = False) -> Path:
    """Create or replace ``path`` atomically: ``write(tmp)`` fills a temporary file beside it.

    The temporary file lives in the same folder (so the final ``os.replace`` is a
    rename on one file system), is flushed to disk before the rename, and is
    removed if ``write`` fails. ``suffix`` keeps an extension some writers insist
    on (Keras wants ``.keras`` or ``.weights.h5``). With ``partial=True`` the
    temporary file is the visible ``<path>.partial`` (long writes a user may watch).
    The file gets the mode a plain ``open`` would give it (the umask's, or the
    replaced file's), not the owner-only mode of a private temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if partial:
        tmp = str(path.with_name(path.name + ".partial"))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.fchmod(fd, _new_file_mode(path))
        finally:
            os.close(fd)
    else:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
        try:
            os.fchmod(fd, _new_file_mode(path))
        finally:
            os.close(fd)
    try:
        write(tmp)
        publish_file(tmp, path)
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
