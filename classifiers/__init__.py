"""Stage 2: linear classifiers on features, their search, evaluation and persistence.

The names below are imported on first use (PEP 562), as in :mod:`features`: a light
submodule such as ``classifiers.novelty``, whose default the command line shows in its
help, does not pull in scikit-learn through this package.
"""

from features.exports import lazy_exports

_HOMES = {
    "CLASSIFIERS": "classifiers.registry",
    "ClassifierConfig": "classifiers.registry",
    "Evaluation": "classifiers.evaluation",
    "FeatureClassifier": "classifiers.estimators",
    "PlattScaledClassifier": "classifiers.platt",
    "PreconditionedLogisticRegression": "classifiers.solvers",
    "RowSpaceBasis": "classifiers.rowspace",
    "StreamingSGDClassifier": "classifiers.streaming_sgd",
    "evaluate_classifier": "classifiers.evaluation",
    "get_classifier_config": "classifiers.registry",
    "load_classifier": "classifiers.persistence",
    "register_classifier": "classifiers.registry",
    "resolve_classifier_names": "classifiers.registry",
    "save_classifier": "classifiers.persistence",
}

__all__ = sorted(_HOMES)


__getattr__, __dir__ = lazy_exports(__name__, _HOMES)
