"""Stage 1: backbones, feature extraction and the HDF5 feature store.

The names below are imported on first use (PEP 562): a light submodule such as
``features.errors``, which the command line imports to start, does not pull in h5py
and the network code through this package.
"""

import importlib

_HOMES = {
    "BACKBONES": "features.backbones",
    "BackboneConfig": "features.backbones",
    "get_backbone": "features.backbones",
    "register_backbone": "features.backbones",
    "UserInputError": "features.errors",
    "WeightsUnavailableError": "features.errors",
    "ExtractionResult": "features.extraction",
    "LabeledImages": "features.extraction",
    "extract_features": "features.extraction",
    "create_extractor": "features.factory",
    "build_base_model": "features.networks",
    "FeatureExtractor": "features.spec",
    "FeatureSpec": "features.spec",
    "NetworkSettings": "features.settings",
    "FeatureStore": "features.store",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> object:
    if name not in _HOMES:
        raise AttributeError(f"module 'features' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
