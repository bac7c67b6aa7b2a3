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
from sklearn.svm import LinearSVC

from classifiers.solvers import PreconditionedLogisticRegression
from classifiers.streaming_sgd import StreamingSGDClassifier
from features.registries import Registry, unknown_choice

EstimatorFactory = Callable[[int, int], BaseEstimator]

# Half-decade steps: the least held-out log-loss often falls between decades (C = 0.03
# on flowers5-lite0, where the decade grid's 0.01 doubled the calibration error), and
# warm starts make the extra steps cheap.
C_GRID = tuple(float(c) for c in np.logspace(-4, 4, 17))
# liblinear cannot warm-start and crawls at large C; its held-out log-loss (after Platt
# scaling) was least at C = 0.003 to 0.1 on the Lite0 feature sets.
SVM_C_GRID = tuple(float(c) for c in np.logspace(-5, 1, 13))
# SGD's held-out log-loss was least at alpha = 0.03 to 0.3 (standardised features);
# below 1e-3 its probabilities are wildly overconfident.
ALPHA_GRID = tuple(float(a) for a in np.logspace(-5, 0, 11))


@dataclass(frozen=True)
class ClassifierConfig:
    """A named classifier family: how to build its estimator and what to tune.

    Attributes
    ----------
    name : str
        Registry key, the ``kind`` of :class:`classifiers.FeatureClassifier`.
    description : str
    factory : callable
        ``factory(random_state, max_iter)`` returns an unfitted estimator;
        see :meth:`make_estimator`.
    param_name : str
        The tuned hyperparameter: ``C`` (larger = weaker regularisation) or ``alpha``
        (larger = stronger). It may sit inside a wrapper (``estimator__C``).
    param_grid : tuple of float
        Values searched by default.
    rowspace : bool
        An L2-regularised linear model whose solution lies in the row space of the
        data, so that the exact basis of :mod:`classifiers.rowspace` applies.
    penalised_intercept : bool
        The solver penalises the intercept (liblinear): the basis may not be centred,
        and is only worth it with fewer rows than columns (a rotation alone does not
        help a dual coordinate-descent solver).
    out_of_core : bool
        Trained chunk by chunk (:mod:`classifiers.streaming_sgd`), never holding all rows.
    platt : bool
        Probabilities come from Platt scaling of the margins, one scale fitted on the
        search's held-out margins (:mod:`classifiers.platt`): for the linear SVM, which
        has margins only, and for the one-vs-rest logistic families, whose own
        normalised probabilities were miscalibrated. The scaled log-loss also chooses C
        (linear SVM, ovr); sgd's alpha is still chosen by its own held-out log-loss.
    fit_dtype : type or None
        The type the solver computes in, if it converts its input on every fit
        (liblinear: float64): each fold's rows are converted once instead.
    """

    name: str
    description: str
    factory: EstimatorFactory = field(repr=False)
    param_name: str = "C"
    param_grid: tuple[float, ...] = C_GRID
    rowspace: bool = True
    penalised_intercept: bool = False
    out_of_core: bool = False
    platt: bool = False
    fit_dtype: type | None = None

    def make_estimator(self, random_state: int, max_iter: int,
                       class_weight: str | None = None) -> BaseEstimator:
        """An unfitted estimator of this family.

        Parameters
        ----------
        random_state : int
            Seed of stochastic solvers.
        max_iter : int
            Iteration limit of iterative solvers.
        class_weight : {None, "balanced"}, optional
            Weights of the training rows by class: every family's estimator takes
            scikit-learn's ``class_weight`` itself.
        """
        return self.factory(random_state, max_iter).set_params(class_weight=class_weight)

    def param_key(self, estimator: BaseEstimator) -> str:
        """Key of :attr:`param_name` in ``estimator.get_params()`` (``C`` or ``estimator__C``)."""
        keys = [k for k in estimator.get_params() if k.split("__")[-1] == self.param_name]
        if len(keys) != 1:
            raise ValueError(f"{type(estimator).__name__} of family {self.name!r} has "
                             f"{len(keys)} parameters named {self.param_name!r}, expected 1")
        return keys[0]


def _logistic(random_state: int, max_iter: int) -> BaseEstimator:
    # scikit-learn's LogisticRegression objective, reached faster (classifiers.solvers)
    return PreconditionedLogisticRegression(max_iter=max_iter)


def _linear_svm(random_state: int, max_iter: int) -> BaseEstimator:
    return LinearSVC(max_iter=max_iter, random_state=random_state)


def _one_vs_rest(random_state: int, max_iter: int) -> BaseEstimator:
    # OneVsRestClassifier(LogisticRegression())'s model in one solver, so that warm
    # starts along the grid survive (OneVsRestClassifier clones its binary models).
    return PreconditionedLogisticRegression(max_iter=max_iter, one_vs_rest=True)


def _streaming_sgd(random_state: int, max_iter: int) -> BaseEstimator:
    return StreamingSGDClassifier(random_state=random_state)  # runs epochs, not max_iter


CLASSIFIERS: Registry[ClassifierConfig] = Registry("classifier")


def register_classifier(config: ClassifierConfig) -> ClassifierConfig:
    """Add a family to :data:`CLASSIFIERS` (names are unique)."""
    return CLASSIFIERS.register(config.name, config)


register_classifier(ClassifierConfig(
    "logreg", "multinomial logistic regression (L2, L-BFGS)", _logistic))
register_classifier(ClassifierConfig(
    "linear_svm", "linear SVM (squared hinge, L2, liblinear; Platt-scaled probabilities)",
    _linear_svm, param_grid=SVM_C_GRID, penalised_intercept=True, platt=True,
    fit_dtype=np.float64))
register_classifier(ClassifierConfig(
    "ovr", "one-vs-rest logistic regression (L2, L-BFGS; Platt-scaled probabilities)",
    _one_vs_rest, platt=True))
register_classifier(ClassifierConfig(
    "sgd", "logistic loss by SGD over chunks of the store (out of core; Platt-scaled "
    "probabilities)", _streaming_sgd, param_name="alpha", param_grid=ALPHA_GRID,
    rowspace=False, out_of_core=True, platt=True))


def get_classifier_config(name: str) -> ClassifierConfig:
    """The registered family ``name``; a :class:`UserInputError` naming the choices otherwise."""
    if name not in CLASSIFIERS:
        raise unknown_choice("classifier", name, [*CLASSIFIERS, "all"])
    return CLASSIFIERS[name]


def resolve_classifier_names(name: str) -> list[str]:
    """``all`` -> every registered name; otherwise ``[name]`` after validation."""
    if name == "all":
        return list(CLASSIFIERS)
    get_classifier_config(name)
    return [name]
