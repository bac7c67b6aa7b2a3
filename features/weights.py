"""Pretrained weights carried to a machine without internet access, checked by digest.

:func:`features.weights_fetch.fetch_weights` writes a backbone's weights with a
manifest, :data:`MANIFEST`, holding each file's SHA-256; on the offline machine
``--weights DEST/<backbone>/<file>`` loads them, and :func:`check_fetched_digest`
refuses a file whose digest differs from its manifest's (a broken or partial copy).
This module only reads: it sits below the network builders that call it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from features.errors import UserInputError
from features.integrity import file_digest

#: Written beside fetched weights: backbone, source and each file's SHA-256.
MANIFEST = "tlearn-weights.json"


def missing_weights_message(network: str, exc: BaseException, weights_file: str) -> str:
    """One line for weights that could not be downloaded, naming the way to carry them."""
    first = str(exc).splitlines()[0] if str(exc) else ""
    return (f"could not download the ImageNet weights of {network} ({exc.__class__.__name__}"
            f"{': ' + first if first else ''}); on a machine with internet access run "
            f"'tlearn weights fetch {network} --dest DIR', copy DIR here and pass "
            f"--weights DIR/{network}/{weights_file}")


def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    """The manifest of a fetched-weights folder, None if it has none."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserInputError(f"cannot read {path} ({exc}); fetch the weights again with "
                             "'tlearn weights fetch'") from exc


def check_fetched_digest(path: str | Path) -> None:
    """Refuse a weights file whose SHA-256 differs from the one its folder's manifest records.

    A file without a manifest beside it, or one the manifest does not list, is not
    checked (the user's own weights).
    """
    path = Path(path)
    manifest = read_manifest(path.parent)
    expected = (manifest or {}).get("files", {}).get(path.name)
    if not expected:
        return
    actual = file_digest(path)
    if actual != expected:
        raise UserInputError(
            f"weights file {path} has SHA-256 {actual[:12]}..., not the {expected[:12]}... "
            f"its {MANIFEST} records (a broken or partial copy); copy it again from the "
            "machine that fetched it")
