"""Where tlearn writes its outputs, and the defaults every stage shares."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

# Defined beside the registry (features/ cannot import pipeline/): one value everywhere.
from features.backbones import DEFAULT_BACKBONE as DEFAULT_BACKBONE

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
    digits of a digest of the names (a path stays short whatever the list).
    """
    parts = [dataset, backbone]
    if layer:
        parts.append(layer)
    if pooling:
        parts.append(pooling)
    if taps:
        parts.append(taps if taps == "stages" else
                     "taps-" + hashlib.sha256(taps.encode()).hexdigest()[:8])
    if mirror:
        parts.append("mirror")
    return features_dir() / ("__".join(parts) + ".h5")
