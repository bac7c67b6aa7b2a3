"""Stage 2: linear classifiers on features, their search, evaluation and persistence."""

from classifiers.estimators import CLASSIFIERS, FeatureClassifier, register_classifier
from classifiers.evaluation import Evaluation, evaluate_classifier
from classifiers.persistence import load_classifier, save_classifier

__all__ = [
    "CLASSIFIERS",
    "Evaluation",
    "FeatureClassifier",
    "evaluate_classifier",
    "load_classifier",
    "register_classifier",
    "save_classifier",
]
