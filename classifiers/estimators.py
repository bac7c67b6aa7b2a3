"""Classifiers on CNN features: a registry of linear models and the estimator users load.

:class:`FeatureClassifier` is a scikit-learn estimator that tunes its
regularisation by cross-validation, fits the final model, and carries the
feature specification of its store, so that :meth:`FeatureClassifier.predict_images`
can rebuild the backbone and classify raw image files.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.multiclass import OneVsRestClassifier
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from sklearn.utils.validation import check_is_fitted

from classifiers.rowspace import RowSpaceBasis
from classifiers.search import SearchResult, check_folds, grid_search, pick_best, stratified_folds
from classifiers.solvers import PreconditionedLogisticRegression
from features.errors import UserInputError

ChunkSource = Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]


@dataclass(frozen=True)
class ClassifierConfig:
    """A named classifier family and how to tune it.

    Attributes
    ----------
    name : str
        Registry key.
    description : str
    param : str
        Searched hyperparameter: ``C`` or ``alpha``.
    default_grid : tuple of float
        Log-spaced values searched by default.
    make : callable
        ``make(seed, max_iter)`` returns an unfitted scikit-learn estimator.
    make_rowspace : callable, optional
        The estimator used on row-space coordinates instead (orthogonal columns of very
        different norms, where a preconditioned solver converges much faster).
    rowspace : bool
        L2-regularised linear model whose solution lies in the row space of the
        data, so the exact row-space shortcut applies.
    out_of_core : bool
        Trained by ``partial_fit`` over chunks of the store.
    """

    name: str
    description: str
    param: str
    default_grid: tuple[float, ...]
    make: Callable[[int, int], Any] = field(repr=False)
    rowspace: bool = True
    out_of_core: bool = False
    param_path: str = ""
    make_rowspace: Callable[[int, int], Any] | None = field(default=None, repr=False)

    @property
    def estimator_param(self) -> str:
        """Name of the searched parameter in ``make()``'s estimator (nested for wrappers)."""
        return self.param_path or self.param


C_GRID = tuple(float(c) for c in np.logspace(-4, 4, 9))
ALPHA_GRID = tuple(float(a) for a in np.logspace(-6, -1, 6))

CLASSIFIERS: dict[str, ClassifierConfig] = {}


def register_classifier(config: ClassifierConfig) -> ClassifierConfig:
    if config.name in CLASSIFIERS:
        raise ValueError(f"classifier {config.name!r} is already registered")
    CLASSIFIERS[config.name] = config
    return config


register_classifier(ClassifierConfig(
    "logreg", "multinomial logistic regression (L2, L-BFGS)", "C", C_GRID,
    lambda seed, max_iter: LogisticRegression(max_iter=max_iter, random_state=seed),
    make_rowspace=lambda seed, max_iter: PreconditionedLogisticRegression(max_iter=max_iter)))
register_classifier(ClassifierConfig(
    "linear_svm", "linear SVM (squared hinge, L2, liblinear)", "C", C_GRID,
    lambda seed, max_iter: LinearSVC(max_iter=max_iter, random_state=seed)))
register_classifier(ClassifierConfig(
    "ovr", "one-vs-rest logistic regression (L2, L-BFGS)", "C", C_GRID,
    lambda seed, max_iter: OneVsRestClassifier(
        LogisticRegression(max_iter=max_iter, random_state=seed)),
    param_path="estimator__C",
    make_rowspace=lambda seed, max_iter: OneVsRestClassifier(
        PreconditionedLogisticRegression(max_iter=max_iter))))
register_classifier(ClassifierConfig(
    "sgd", "logistic loss by SGD over chunks of the store (out of core)", "alpha", ALPHA_GRID,
    lambda seed, max_iter: StreamingSGDClassifier(random_state=seed),
    rowspace=False, out_of_core=True))


def get_classifier_config(name: str) -> ClassifierConfig:
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


# -- out-of-core SGD ---------------------------------------------------------------------------

class StreamingSGDClassifier(ClassifierMixin, BaseEstimator):
    """Standardised logistic-loss SGD trained chunk by chunk (``partial_fit``).

    Parameters
    ----------
    alpha : float, default=1e-4
        L2 regularisation strength.
    epochs : int, default=5
        Passes over the data after the pass that fits the scaler.
    random_state : int, default=0

    Attributes
    ----------
    scaler_ : StandardScaler
    sgd_ : SGDClassifier
    classes_ : numpy.ndarray
    """

    def __init__(self, alpha: float = 1e-4, epochs: int = 5, random_state: int = 0) -> None:
        self.alpha = alpha
        self.epochs = epochs
        self.random_state = random_state

    def _new_sgd(self, alpha: float) -> SGDClassifier:
        return SGDClassifier(loss="log_loss", alpha=alpha, learning_rate="optimal",
                             random_state=self.random_state)

    def fit(self, X: np.ndarray, y: np.ndarray) -> StreamingSGDClassifier:
        X, y = np.asarray(X), np.asarray(y)
        return self.fit_chunks(lambda: _array_chunks(X, y), classes=np.unique(y))

    def fit_chunks(self, chunks: ChunkSource, classes: np.ndarray) -> StreamingSGDClassifier:
        """Fit from a callable returning a fresh iterable of ``(X, y)`` chunks on each call."""
        self.classes_ = np.asarray(classes)
        self.scaler_ = fit_scaler(chunks)
        self.sgd_ = self._new_sgd(self.alpha)
        rng = np.random.default_rng(self.random_state)
        for _ in range(self.epochs):
            for X, y in chunks():
                order = rng.permutation(len(y))
                self.sgd_.partial_fit(self.scaler_.transform(X[order]), y[order],
                                      classes=self.classes_)
        self.n_features_in_ = self.scaler_.n_features_in_
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "sgd_")
        return self.sgd_.decision_function(self.scaler_.transform(X))

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "sgd_")
        return self.sgd_.predict_proba(self.scaler_.transform(X))

    def predict(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "sgd_")
        return self.sgd_.predict(self.scaler_.transform(X))


def _array_chunks(X: np.ndarray, y: np.ndarray, rows: int = 1024) -> Iterator:
    for start in range(0, len(y), rows):
        yield X[start:start + rows], y[start:start + rows]


def fit_scaler(chunks: ChunkSource) -> StandardScaler:
    scaler = StandardScaler()
    for X, _ in chunks():
        scaler.partial_fit(X)
    return scaler


def search_sgd(chunks: ChunkSource, y: np.ndarray, grid: Sequence[float], *, cv: int, seed: int,
               epochs: int) -> SearchResult:
    """Cross-validate ``alpha`` for :class:`StreamingSGDClassifier` in a few passes over the data.

    Every (alpha, fold) model is updated from the same chunk as it streams by, so
    the store is read ``epochs + 2`` times whatever the grid and fold count. The
    scaler is fitted on the whole train split (means and variances only).
    """
    check_folds(y, cv)
    grid = sorted(float(v) for v in grid)
    classes = np.unique(y)
    fold_of = np.empty(len(y), dtype=np.int64)
    for f, (_, held_out) in enumerate(stratified_folds(y, cv, seed)):
        fold_of[held_out] = f
    scaler = fit_scaler(chunks)
    template = StreamingSGDClassifier(random_state=seed)
    models = {(a, f): template._new_sgd(grid[a]) for a in range(len(grid)) for f in range(cv)}
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        pos = 0
        for X, yc in chunks():
            Xs, folds = scaler.transform(X), fold_of[pos:pos + len(yc)]
            pos += len(yc)
            order = rng.permutation(len(yc))
            Xs, yc, folds = Xs[order], yc[order], folds[order]
            for (_, f), model in models.items():
                keep = folds != f
                if keep.any():
                    model.partial_fit(Xs[keep], yc[keep], classes=classes)
    correct = np.zeros((len(grid), cv))
    total = np.bincount(fold_of, minlength=cv).astype(float)
    pos = 0
    for X, yc in chunks():
        Xs, folds = scaler.transform(X), fold_of[pos:pos + len(yc)]
        pos += len(yc)
        for (a, f), model in models.items():
            held = folds == f
            if held.any():
                correct[a, f] += np.sum(model.predict(Xs[held]) == yc[held])
    scores = correct / total
    return SearchResult("alpha", grid, scores, pick_best(scores, regularisation_decreases=False))


# -- the estimator users load ------------------------------------------------------------------

class FeatureClassifier(ClassifierMixin, BaseEstimator):
    """A tuned linear classifier on CNN features that can also classify image files.

    Parameters
    ----------
    kind : {"logreg", "linear_svm", "ovr", "sgd"}, default="logreg"
        Classifier family, see :data:`CLASSIFIERS`.
    grid : sequence of float, optional
        Values of C (alpha for ``sgd``) to search; the family's default if None.
    cv : int, default=3
        Stratified folds of the search (on the training data only).
    seed : int, default=0
        Seed of the folds and of stochastic solvers.
    n_jobs : int, default=1
        Threads for the search.
    max_iter : int, default=1000
        Iteration limit of the solvers.
    epochs : int, default=5
        Passes over the data for ``sgd``.
    rowspace : {"auto", True, False}, default="auto"
        Use the exact row-space shortcut (see :mod:`classifiers.rowspace`) when
        there are fewer rows than features.
    feature_spec : dict, optional
        Specification of the features (from the store), needed by :meth:`predict_images`.
    label_names : sequence of str, optional
        Class names, indexed by label.

    Attributes
    ----------
    estimator_ : scikit-learn estimator
        The final model, fitted on all training rows, in feature space.
    classes_ : numpy.ndarray
    label_names_ : list of str
    feature_spec_ : dict or None
    best_params_ : dict
        The chosen hyperparameter.
    search_ : SearchResult
    used_rowspace_ : bool
    converged_ : bool
        False when the final fit stopped at ``max_iter``.
    fit_seconds_ : float
    n_features_in_ : int
    """

    def __init__(self, kind: str = "logreg", grid: Sequence[float] | None = None, cv: int = 3,
                 seed: int = 0, n_jobs: int = 1, max_iter: int = 1000, epochs: int = 5,
                 rowspace: str | bool = "auto", feature_spec: dict | None = None,
                 label_names: Sequence[str] | None = None) -> None:
        self.kind = kind
        self.grid = grid
        self.cv = cv
        self.seed = seed
        self.n_jobs = n_jobs
        self.max_iter = max_iter
        self.epochs = epochs
        self.rowspace = rowspace
        self.feature_spec = feature_spec
        self.label_names = label_names

    # fitting --------------------------------------------------------------------------------
    def _config(self) -> ClassifierConfig:
        return get_classifier_config(self.kind)

    def _template(self, rowspace: bool = False):
        config = self._config()
        make = config.make_rowspace if rowspace and config.make_rowspace else config.make
        est = make(self.seed, self.max_iter)
        if config.out_of_core:
            est.set_params(epochs=self.epochs)
        return est

    def _check_X_y(self, X, y) -> tuple[np.ndarray, np.ndarray]:
        X = np.asarray(X)
        if X.ndim != 2:
            raise UserInputError(f"features must be a 2-D array, got shape {X.shape}")
        if X.dtype not in (np.float32, np.float64):
            X = X.astype(np.float32)
        y = np.asarray(y)
        if len(y) != len(X):
            raise UserInputError(f"{len(X)} feature rows but {len(y)} labels")
        if not np.isfinite(X).all():
            raise UserInputError("features contain NaN or infinite values; extract them again")
        return X, y

    def _finish(self, search: SearchResult, y: np.ndarray, t0: float) -> None:
        self.search_ = search
        self.best_params_ = {search.param: search.best_value}
        self.classes_ = np.unique(y)
        names = list(self.label_names) if self.label_names is not None else None
        self.label_names_ = names or [str(c) for c in self.classes_]
        self.feature_spec_ = dict(self.feature_spec) if self.feature_spec else None
        self.fit_seconds_ = time.perf_counter() - t0

    def fit(self, X: np.ndarray, y: np.ndarray) -> FeatureClassifier:
        """Search the grid by cross-validation on ``(X, y)``, then fit on all of it.

        Parameters
        ----------
        X : array of shape (n_samples, n_features)
            Training features (float32 is kept as is; no copy is made).
        y : array of shape (n_samples,)

        Returns
        -------
        self
        """
        t0 = time.perf_counter()
        X, y = self._check_X_y(X, y)
        config = self._config()
        grid = list(self.grid) if self.grid is not None else list(config.default_grid)
        check_folds(y, self.cv)
        self.n_features_in_ = X.shape[1]
        if config.out_of_core:
            chunks = lambda: _array_chunks(X, y)  # noqa: E731
            self._fit_out_of_core(chunks, y, grid)
            self._finish(self.search_, y, t0)
            return self
        use_rowspace = config.rowspace and (
            self.rowspace is True or (self.rowspace == "auto" and X.shape[0] < X.shape[1]))
        self.used_rowspace_ = bool(use_rowspace)
        template = self._template(rowspace=self.used_rowspace_)
        if use_rowspace:
            basis = RowSpaceBasis().fit(X)
            Z = basis.train_coordinates_
            search = grid_search(template, config.estimator_param, grid, Z, y, cv=self.cv,
                                 seed=self.seed, n_jobs=self.n_jobs, name=config.param,
                                 progress=getattr(self, "_progress", None))
            final = clone(template).set_params(**{config.estimator_param: search.best_value})
            self._final_fit(final, Z, y)
            self.estimator_ = _lift(final, basis, X.shape[1])
            basis.release()
        else:
            search = grid_search(template, config.estimator_param, grid, X, y, cv=self.cv,
                                 seed=self.seed, n_jobs=self.n_jobs, name=config.param,
                                 progress=getattr(self, "_progress", None))
            final = clone(template).set_params(**{config.estimator_param: search.best_value})
            self.estimator_ = self._final_fit(final, X, y)
        self._finish(search, y, t0)
        return self

    def _final_fit(self, estimator, X, y):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            estimator.fit(X, y)
        parts = getattr(estimator, "estimators_", [estimator])
        self.converged_ = not any(issubclass(w.category, ConvergenceWarning) for w in caught) \
            and all(getattr(part, "converged_", True) for part in parts)
        return estimator

    def _fit_out_of_core(self, chunks: ChunkSource, y: np.ndarray, grid: list[float]) -> None:
        self.used_rowspace_ = False
        self.converged_ = True  # SGD runs a fixed number of epochs
        search = search_sgd(chunks, y, grid, cv=self.cv, seed=self.seed, epochs=self.epochs)
        final = StreamingSGDClassifier(alpha=search.best_value, epochs=self.epochs,
                                       random_state=self.seed)
        self.estimator_ = final.fit_chunks(chunks, classes=np.unique(y))
        self.search_ = search

    def fit_store(self, store, split: str = "train",
                  progress: Callable[[int, int], None] | None = None) -> FeatureClassifier:
        """Fit on a split of a :class:`features.FeatureStore`, recording its specification.

        ``sgd`` streams the store chunk by chunk (memory bounded by the chunk size);
        the other families read the split into one float32 array. ``progress(done, cv)``
        is called as cross-validation folds finish.
        """
        self._progress = progress
        self.feature_spec = store.spec.to_dict()
        self.label_names = store.label_names
        config = self._config()
        if not config.out_of_core:
            X, y = store.load(split)
            return self.fit(X, y)
        t0 = time.perf_counter()
        y = store.labels[store.split_mask(split)]
        check_folds(y, self.cv)

        def chunks():
            for _, X, yc in store.iter_chunks(split):
                yield X, yc

        grid = list(self.grid) if self.grid is not None else list(config.default_grid)
        self.n_features_in_ = store.feature_dim
        self._fit_out_of_core(chunks, y, grid)
        self._finish(self.search_, y, t0)
        return self

    # prediction -----------------------------------------------------------------------------
    def _check_features(self, X) -> np.ndarray:
        check_is_fitted(self, "estimator_")
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise UserInputError(
                f"features have {X.shape[-1] if X.ndim else 0} values per image but this "
                f"classifier expects {self.n_features_in_} ({self.describe_features()}); use "
                "features extracted with the same backbone, layer, pooling and input size"
            )
        return X

    def describe_features(self) -> str:
        spec = getattr(self, "feature_spec_", None)
        if not spec:
            return "unknown feature specification"
        return f"{spec['backbone']}/{spec['layer']}/{spec['pooling']} @ {spec['input_size']}px"

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted label index of each row."""
        return self.estimator_.predict(self._check_features(X))

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Class scores of each row, shape (n, classes) (binary problems included)."""
        scores = self.estimator_.decision_function(self._check_features(X))
        if scores.ndim == 1:
            scores = np.column_stack([-scores, scores])
        return scores

    @property
    def has_predict_proba(self) -> bool:
        return self.kind != "linear_svm"

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities; not available for ``linear_svm`` (use ``decision_function``)."""
        if not self.has_predict_proba:
            raise AttributeError("linear_svm gives scores, not probabilities; "
                                 "use decision_function")
        return self.estimator_.predict_proba(self._check_features(X))

    def class_scores(self, X: np.ndarray) -> np.ndarray:
        """Probabilities where the model has them, otherwise decision scores."""
        return self.predict_proba(X) if self.has_predict_proba else self.decision_function(X)

    # images ---------------------------------------------------------------------------------
    def feature_extractor(self):
        """The backbone that makes this model's features (built on first use, then cached)."""
        cached = getattr(self, "_extractor_cache", None)
        if cached is None:
            from features.backbones import FeatureSpec, build_from_spec

            if not getattr(self, "feature_spec_", None):
                raise UserInputError(
                    "this classifier was fitted without a feature specification; fit it with "
                    "fit_store() or pass feature_spec= so it can rebuild the backbone"
                )
            cached = build_from_spec(FeatureSpec.from_dict(self.feature_spec_))
            self._extractor_cache = cached
        return cached

    def predict_images(self, paths: Sequence[str], top: int = 1) -> list[dict]:
        """Classify image files.

        Returns
        -------
        list of dict
            One per path, in order: ``{"path", "label", "score", "top": [(label, score)...]}``,
            or ``{"path", "error"}`` for a file that could not be read. Scores are
            probabilities except for ``linear_svm``.
        """
        from classifiers.evaluation import classify_files

        extractor = self.feature_extractor()
        names = [self.label_names_[c] for c in self.classes_]
        return classify_files(paths, extractor.spec.input_size,
                              lambda images: self.class_scores(extractor(images)), names, top)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_extractor_cache", None)  # a Keras model: rebuilt lazily after loading
        state.pop("_progress", None)  # a callback of the training run
        return state


def _lift(estimator, basis: RowSpaceBasis, n_features: int):
    """Turn an estimator fitted on row-space coordinates into the same one on raw features."""
    targets = estimator.estimators_ if isinstance(estimator, OneVsRestClassifier) else [estimator]
    for est in targets:
        est.coef_ = basis.lift(est.coef_)
        est.n_features_in_ = n_features
    estimator.n_features_in_ = n_features
    return estimator
