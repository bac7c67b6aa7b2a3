"""Where tlearn writes its outputs, and the defaults every stage shares."""

from __future__ import annotations

import os
from pathlib import Path

# Defined beside the registry (features/ cannot import pipeline/): one value everywhere.
from features.backbones import DEFAULT_BACKBONE as DEFAULT_BACKBONE
from features.backbones import STAGE_TAPS
from features.integrity import settings_key

DEFAULT_TEST_SIZE = 0.25
DEFAULT_SEED = 42
DEFAULT_BATCH_SIZE = 32


def artifacts_dir() -> Path:
    """Root of generated outputs: ``$TLEARN_ARTIFACTS`` or ``./artifacts``."""
    return Path(os.environ.get("TLEARN_ARTIFACTS", "artifacts"))


def features_dir() -> Path:
    return artifacts_dir() / "features"


def classifiers_dir() -> Path:
    return artifacts_dir() / "classifiers"


def reports_dir() -> Path:
    return artifacts_dir() / "reports"


def default_store_path(dataset: str, backbone: str, layer: str | None = None,
                       pooling: str | None = None, *, taps: str | None = None,
                       mirror: bool = False) -> Path:
    """``artifacts/features/<dataset>__<backbone>[__<layer>][__<pooling>][__<taps>][__mirror].h5``.

    ``<taps>`` is ``stages`` for that choice, else ``taps-`` and the first eight hex
    digits of :func:`features.integrity.settings_key` of the names (a path stays short
    whatever the list).
    """
    parts = [dataset, backbone]
    if layer:
        parts.append(layer)
    if pooling:
        parts.append(pooling)
    if taps:
        parts.append(taps if taps == STAGE_TAPS else "taps-" + settings_key(taps)[:8])
    if mirror:
        parts.append("mirror")
    return features_dir() / ("__".join(parts) + ".h5")
