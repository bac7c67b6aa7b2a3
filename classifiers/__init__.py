"""Stage 2: linear classifiers on features, their search, evaluation and persistence."""

from classifiers.estimators import FeatureClassifier
from classifiers.evaluation import Evaluation, evaluate_classifier
from classifiers.persistence import load_classifier, save_classifier
from classifiers.platt import PlattScaledClassifier
from classifiers.registry import (
    CLASSIFIERS,
    ClassifierConfig,
    get_classifier_config,
    register_classifier,
    resolve_classifier_names,
)
from classifiers.rowspace import RowSpaceBasis
from classifiers.solvers import PreconditionedLogisticRegression
from classifiers.streaming_sgd import StreamingSGDClassifier

__all__ = [
    "CLASSIFIERS",
    "ClassifierConfig",
    "Evaluation",
    "FeatureClassifier",
    "PlattScaledClassifier",
    "PreconditionedLogisticRegression",
    "RowSpaceBasis",
    "StreamingSGDClassifier",
    "evaluate_classifier",
    "get_classifier_config",
    "load_classifier",
    "register_classifier",
    "resolve_classifier_names",
    "save_classifier",
]
