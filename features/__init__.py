"""Stage 1: backbones, feature extraction and the HDF5 feature store.

The names below are imported on first use (PEP 562): a light submodule such as
``features.errors``, which the command line imports to start, does not pull in h5py
and the network code through this package.
"""

from features.exports import lazy_exports

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


__getattr__, __dir__ = lazy_exports(__name__, _HOMES)
