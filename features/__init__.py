"""Stage 1: backbones, feature extraction and the HDF5 feature store."""

from features.backbones import (
    BACKBONES,
    BackboneConfig,
    FeatureExtractor,
    FeatureSpec,
    build_feature_extractor,
    get_backbone,
    get_single_backbone,
    register_backbone,
)
from features.errors import UserInputError, WeightsUnavailableError
from features.extraction import ExtractionResult, LabeledImages, extract_features
from features.store import FeatureStore

__all__ = [
    "BACKBONES",
    "BackboneConfig",
    "ExtractionResult",
    "FeatureExtractor",
    "FeatureSpec",
    "FeatureStore",
    "LabeledImages",
    "UserInputError",
    "WeightsUnavailableError",
    "build_feature_extractor",
    "extract_features",
    "get_backbone",
    "get_single_backbone",
    "register_backbone",
]
