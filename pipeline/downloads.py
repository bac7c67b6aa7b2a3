"""Download files with resume and checksum, and unpack archives without escaping the target.

A download goes to ``<file>.part`` and is renamed only once its checksum matches,
so an interrupted or corrupted transfer never looks like a finished file; a
rerun resumes the ``.part`` with an HTTP range request when the server allows it.
"""

from __future__ import annotations

import http.client
import os
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from features.errors import UserInputError
from features.integrity import file_digest, publish_file

ProgressCallback = Callable[[int, int], None]
_BLOCK = 1 << 16



def download_file(url: str, dest: str | os.PathLike, *, checksum: str, algorithm: str = "sha256",
                  timeout: float = 60.0, progress: ProgressCallback | None = None) -> Path:
    """Fetch ``url`` to ``dest``, resuming a previous partial download, and verify it.

    Parameters
    ----------
    url : str
    dest : path-like
        Final file; ``<dest>.part`` holds the transfer until it is verified.
    checksum : str
        Expected hex digest.
    algorithm : str, default="sha256"
        ``hashlib`` algorithm of ``checksum`` (``md5`` for archives published with one).
    timeout : float
        Seconds without data before giving up.
    progress : callable, optional
        ``progress(bytes_done, bytes_total)``; total is 0 when unknown.

    Returns
    -------
    Path

    Raises
    ------
    UserInputError
        Network failure (the ``.part`` stays for a resume) or checksum mismatch (the
        ``.part`` is removed, so a rerun starts clean).
    """
    dest = Path(dest)
    if dest.exists() and file_digest(dest, algorithm) == checksum:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "tlearn"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status = getattr(response, "status", 200)
            if have and status != 206:
                have = 0  # the server ignored the range: start again from the first byte
            length = int(response.headers.get("Content-Length") or 0)
            total = have + length if length else 0
            with part.open("ab" if have else "wb") as out:
                done = have
                if progress:
                    progress(done, total)
                while block := response.read(_BLOCK):
                    out.write(block)
                    done += len(block)
                    if progress:
                        progress(done, total)
            if total and done < total:
                raise ConnectionError(f"connection closed after {done} of {total} bytes")
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and part.exists():  # range beyond the end: the .part is complete
            pass
        else:
            raise UserInputError(f"download of {url} failed: HTTP {exc.code} {exc.reason}; "
                                 "rerun later to resume") from exc
    except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError,
            OSError) as exc:
        reason = getattr(exc, "reason", exc)
        kept = part.exists() and part.stat().st_size > 0
        then = (f"rerun the same command to resume (partial data kept in {part})" if kept
                else "check the network connection and rerun")
        raise UserInputError(f"download of {url} failed ({reason}); {then}") from exc
    actual = file_digest(part, algorithm)
    if actual != checksum:
        part.unlink()
        raise UserInputError(
            f"{url} has {algorithm} {actual}, expected {checksum}: the download is corrupt "
            "or the file changed upstream; it was removed, rerun to download again"
        )
    publish_file(part, dest)
    return dest


def _check_member(name: str, target: Path) -> Path:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        raise UserInputError(f"archive member {name!r} would be written outside {target}; "
                             "refusing to extract this archive")
    resolved = (target / path).resolve()
    if not resolved.is_relative_to(target.resolve()):
        raise UserInputError(f"archive member {name!r} escapes {target}; refusing to extract")
    return resolved


def safe_extract(archive: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Unpack a tar or zip archive into ``target``, refusing any member that would escape it.

    Links and device files are refused too. Everything is unpacked into a temporary
    sibling folder first and moved into place at the end, so a failure leaves nothing.
    """
    archive, target = Path(archive), Path(target)
    staging = target.with_name(target.name + ".extracting")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        if tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tar:
                members = tar.getmembers()
                for member in members:
                    _check_member(member.name, staging)
                    if not (member.isfile() or member.isdir()):
                        raise UserInputError(
                            f"archive member {member.name!r} is a link or special file; "
                            "refusing to extract this archive"
                        )
                for member in members:
                    destination = staging / member.name
                    if member.isdir():
                        destination.mkdir(parents=True, exist_ok=True)
                        continue
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    source = tar.extractfile(member)
                    with source, destination.open("wb") as out:
                        shutil.copyfileobj(source, out)
        elif zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    destination = _check_member(info.filename, staging)
                    if info.is_dir():
                        destination.mkdir(parents=True, exist_ok=True)
                        continue
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as source, destination.open("wb") as out:
                        shutil.copyfileobj(source, out)
        else:
            raise UserInputError(f"{archive} is neither a tar nor a zip archive")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
