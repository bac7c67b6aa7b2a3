"""Stage 1: backbones, feature extraction and the HDF5 feature store."""

from features.backbones import BACKBONES, BackboneConfig, get_backbone, register_backbone
from features.errors import UserInputError, WeightsUnavailableError
from features.extraction import ExtractionResult, LabeledImages, extract_features
from features.factory import create_extractor
from features.networks import build_base_model
from features.spec import FeatureExtractor, FeatureSpec
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
    "build_base_model",
    "create_extractor",
    "extract_features",
    "get_backbone",
    "register_backbone",
]
