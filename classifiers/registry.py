"""The classifier families tlearn trains, each an estimator factory and its parameter grid.

A family is one :class:`ClassifierConfig` in :data:`CLASSIFIERS`: a small named
factory function that builds the unfitted scikit-learn estimator, the name of
the hyperparameter tuned by cross-validation and the values tried by default.
Adding a family is writing its factory and registering one entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.svm import LinearSVC

from classifiers.solvers import PreconditionedLogisticRegression
from classifiers.streaming_sgd import StreamingSGDClassifier
from features.errors import UserInputError

EstimatorFactory = Callable[[int, int, bool], BaseEstimator]

C_GRID = tuple(float(c) for c in np.logspace(-4, 4, 9))
ALPHA_GRID = tuple(float(a) for a in np.logspace(-6, -1, 6))


@dataclass(frozen=True)
class ClassifierConfig:
    """A named classifier family: how to build its estimator and what to tune.

    Attributes
    ----------
    name : str
        Registry key, the ``kind`` of :class:`classifiers.FeatureClassifier`.
    description : str
    factory : callable
        ``factory(random_state, max_iter, rowspace)`` returns an unfitted estimator;
        see :meth:`make_estimator`.
    param_name : str
        The tuned hyperparameter: ``C`` (larger = weaker regularisation) or ``alpha``
        (larger = stronger). It may sit inside a wrapper (``estimator__C``).
    param_grid : tuple of float
        Values searched by default.
    rowspace : bool
        An L2-regularised linear model whose solution lies in the row space of the
        data, so that the exact row-space shortcut (:mod:`classifiers.rowspace`) applies.
    out_of_core : bool
        Trained chunk by chunk (:mod:`classifiers.streaming_sgd`), never holding all rows.
    probabilities : bool
        The fitted estimator has ``predict_proba``.
    """

    name: str
    description: str
    factory: EstimatorFactory = field(repr=False)
    param_name: str = "C"
    param_grid: tuple[float, ...] = C_GRID
    rowspace: bool = True
    out_of_core: bool = False
    probabilities: bool = True

    def make_estimator(self, random_state: int, max_iter: int, rowspace: bool = False
                       ) -> BaseEstimator:
        """An unfitted estimator of this family.

        Parameters
        ----------
        random_state : int
            Seed of stochastic solvers.
        max_iter : int
            Iteration limit of iterative solvers.
        rowspace : bool, default=False
            The estimator to fit on row-space coordinates, whose orthogonal columns
            have norms spanning orders of magnitude (same model, a better-suited solver).
        """
        return self.factory(random_state, max_iter, rowspace)

    def param_key(self, estimator: BaseEstimator) -> str:
        """Key of :attr:`param_name` in ``estimator.get_params()`` (``C`` or ``estimator__C``)."""
        keys = [k for k in estimator.get_params() if k.split("__")[-1] == self.param_name]
        if len(keys) != 1:
            raise ValueError(f"{type(estimator).__name__} of family {self.name!r} has "
                             f"{len(keys)} parameters named {self.param_name!r}, expected 1")
        return keys[0]


def _logistic(random_state: int, max_iter: int, rowspace: bool) -> BaseEstimator:
    if rowspace:
        return PreconditionedLogisticRegression(max_iter=max_iter)
    return LogisticRegression(max_iter=max_iter, random_state=random_state)


def _linear_svm(random_state: int, max_iter: int, rowspace: bool) -> BaseEstimator:
    return LinearSVC(max_iter=max_iter, random_state=random_state)


def _one_vs_rest(random_state: int, max_iter: int, rowspace: bool) -> BaseEstimator:
    return OneVsRestClassifier(_logistic(random_state, max_iter, rowspace))


def _streaming_sgd(random_state: int, max_iter: int, rowspace: bool) -> BaseEstimator:
    return StreamingSGDClassifier(random_state=random_state)  # runs epochs, not max_iter


CLASSIFIERS: dict[str, ClassifierConfig] = {}


def register_classifier(config: ClassifierConfig) -> ClassifierConfig:
    """Add a family to :data:`CLASSIFIERS` (names are unique)."""
    if config.name in CLASSIFIERS:
        raise ValueError(f"classifier {config.name!r} is already registered")
    CLASSIFIERS[config.name] = config
    return config


register_classifier(ClassifierConfig(
    "logreg", "multinomial logistic regression (L2, L-BFGS)", _logistic))
register_classifier(ClassifierConfig(
    "linear_svm", "linear SVM (squared hinge, L2, liblinear)", _linear_svm,
    probabilities=False))
register_classifier(ClassifierConfig(
    "ovr", "one-vs-rest logistic regression (L2, L-BFGS)", _one_vs_rest))
register_classifier(ClassifierConfig(
    "sgd", "logistic loss by SGD over chunks of the store (out of core)", _streaming_sgd,
    param_name="alpha", param_grid=ALPHA_GRID, rowspace=False, out_of_core=True))


def get_classifier_config(name: str) -> ClassifierConfig:
    """The registered family ``name``; a :class:`UserInputError` naming the choices otherwise."""
    if name not in CLASSIFIERS:
        raise UserInputError(
            f"unknown classifier {name!r}; choose one of: {', '.join(CLASSIFIERS)}, all"
        )
    return CLASSIFIERS[name]


def resolve_classifier_names(name: str) -> list[str]:
    """``all`` -> every registered name; otherwise ``[name]`` after validation."""
    if name == "all":
        return list(CLASSIFIERS)
    get_classifier_config(name)
    return [name]
