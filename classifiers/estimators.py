"""The estimator users load: a tuned linear classifier on CNN features that can classify images.

:class:`FeatureClassifier` is a scikit-learn estimator that tunes the
regularisation of one family of :data:`classifiers.registry.CLASSIFIERS` by
cross-validated log-loss (:mod:`classifiers.search`), fits the final model (in
the principal axes of the training rows when that is exact, see
:mod:`classifiers.rowspace`), gives probabilities for every family (Platt
scaling of the margins for the linear SVM and the one-vs-rest families,
:mod:`classifiers.platt`), and carries the feature
specification of its store, so that :meth:`FeatureClassifier.predict_images`
can rebuild the backbone and classify raw image files.
"""

from __future__ import annotations

import json
import numbers
import time
from collections.abc import Callable, Sequence
from typing import ClassVar

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, InvalidParameterError, StrOptions
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from classifiers.novelty import DEFAULT_COVERAGE, UnknownScore, fit_unknown_score
from classifiers.platt import PlattScaledClassifier
from classifiers.registry import ClassifierConfig, get_classifier_config
from classifiers.rowspace import CentredRows, RowSpaceBasis, lift_estimator
from classifiers.search import (
    FoldRunner,
    check_folds,
    fold_layout,
    search_and_fit,
    stratified_folds,
)
from classifiers.solvers import CLASS_WEIGHTS
from classifiers.streaming_sgd import ChunkSource, array_chunks, search_sgd
from features.errors import UserInputError
from features.prediction import ImageScorer

SOLVER_SPACES = ("auto", "rowspace", "centred", "features")

Progress = Callable[[int, int], None]


class InvalidParameter(UserInputError, InvalidParameterError):
    """A bad parameter of :class:`FeatureClassifier`, in scikit-learn's words.

    Both scikit-learn's ``InvalidParameterError`` (what its tooling expects) and a
    :class:`features.errors.UserInputError`, which the command line shows as one line.
    """


def _has_predict_proba(model: FeatureClassifier) -> bool:
    # Every family has probabilities; only models pickled before Platt scaling (a bare
    # LinearSVC) have margins alone.
    estimator = getattr(model, "estimator_", None)
    return estimator is None or hasattr(estimator, "predict_proba")


def _int_seed(random_state: int | np.random.RandomState | None) -> int:
    """One integer seed for the folds and the solvers, from an int, None or a RandomState."""
    if isinstance(random_state, numbers.Integral):
        return int(random_state)
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


def _class_names(classes: np.ndarray, label_names: Sequence[str] | None) -> list[str]:
    """Display name of each class, in ``classes`` order."""
    if label_names is None:
        return [str(c) for c in classes]
    names = list(label_names)
    if classes.dtype.kind not in "iu":
        raise UserInputError(
            f"label_names names integer labels (label i is label_names[i]), but the labels "
            f"are {classes.dtype} values such as {classes[0]!r}; leave label_names out and "
            "the labels name themselves"
        )
    unnamed = classes[(classes < 0) | (classes >= len(names))]
    if unnamed.size:
        raise UserInputError(
            f"label {unnamed[0]} has no name: label_names has {len(names)} entries, naming "
            f"labels 0 to {len(names) - 1}"
        )
    return [str(names[c]) for c in classes]


# Above any network activation by orders of magnitude, and below where float32 sums of
# squares overflow (~1.8e19): values past it are a damaged store (a flipped exponent bit
# lands near 1e37), and the solvers would return garbage or fail deep inside.
FEATURE_LIMIT = 1e10


def check_feature_values(X: np.ndarray, where: str = "the features",
                         rows: np.ndarray | None = None) -> None:
    """Refuse NaN, infinite or absurdly large (> ``FEATURE_LIMIT``) feature values.

    Like scikit-learn's ``check_array`` for NaN and infinity, with the rows named:
    ``rows`` maps the rows of ``X`` to the numbers shown (a store's row numbers).
    Checked in blocks of rows, so the memory used stays small whatever the size of ``X``.
    """
    bad: list[int] = []
    for start in range(0, len(X), 4096):
        peak = np.max(np.abs(X[start:start + 4096]), axis=1, initial=0.0)
        bad.extend((start + np.flatnonzero(~(peak <= FEATURE_LIMIT))).tolist())
    if not bad:
        return
    shown = np.asarray(bad) if rows is None else np.asarray(rows)[bad]
    listed = ", ".join(str(r) for r in shown[:5]) + (f" and {len(bad) - 5} more"
                                                     if len(bad) > 5 else "")
    raise UserInputError(
        f"{where}: row(s) {listed} hold NaN, infinite or absurd values (beyond "
        f"{FEATURE_LIMIT:.0e}); the data is damaged: extract the features again")


class FeatureClassifier(ClassifierMixin, BaseEstimator):
    """A tuned linear classifier on CNN features that can also classify image files.

    Parameters
    ----------
    kind : {"logreg", "linear_svm", "ovr", "sgd"}, default="logreg"
        Classifier family, see :data:`classifiers.registry.CLASSIFIERS`.
    grid : sequence of float, optional
        Values of C (alpha for ``sgd``) to search; the family's default if None. The
        value of the least held-out log-loss is chosen (:mod:`classifiers.search`).
    cv : int, default=3
        Stratified folds of the search (on the training data only).
    random_state : int, RandomState instance or None, default=0
        Seed of the folds and of stochastic solvers.
    n_jobs : int or None, default=None
        Folds fitted at once, in threads; None: one per CPU. The folds of the first
        k-fold split train on views of tlearn's one copy of the rows (logreg, ovr); the
        others copy their fold's rows.
    max_iter : int, default=1000
        Iteration limit of the solvers.
    epochs : int, default=5
        Passes over the data for ``sgd``.
    solver_space : {"auto", "rowspace", "centred", "features"}, default="auto"
        Where the model is fitted. ``"rowspace"``: on the coordinates of the training
        rows in their principal axes (centred for the logistic models), then mapped
        back to features (the same model, see :mod:`classifiers.rowspace`; ``logreg``,
        ``linear_svm`` and ``ovr`` only). ``"centred"``: on the features minus their
        mean, the intercept moved back after (the same model; ``logreg`` and ``ovr``).
        ``"features"``: on the features directly. ``"auto"``: for ``logreg`` and
        ``ovr`` the principal axes when there are fewer rows than features, the
        centred features otherwise (the rotation does not pay there, see
        :mod:`classifiers.rowspace`); for ``linear_svm`` the principal axes when there
        are fewer rows than features, the features otherwise.
    feature_spec : dict, optional
        Specification of the features, needed by :meth:`predict_images`.
        :meth:`fit_store` takes it from the store instead.
    label_names : sequence of str, optional
        Names of integer labels: label ``i`` is called ``label_names[i]``. Without
        it, classes are named by their labels (which may be strings).
        :meth:`fit_store` takes them from the store instead.
    n_repeats : int, default=1
        Times the k-fold split is repeated, shuffled differently: every value is then
        judged on ``cv * n_repeats`` held-out folds (and the search takes as much longer).
        On the Lite0 benchmark sets more repeats did not change the choice.
    class_weight : {None, "balanced"}, default=None
        Weights of the training rows by class, for imbalanced classes. ``"balanced"``:
        scikit-learn's ``n_samples / (n_classes * bincount(y))``, counted on the rows of
        each fit (each cross-validation fold, then all rows). The search then scores
        the held-out rows with the same weights (held-out accuracy becomes balanced
        accuracy), and the Platt scales are fitted with them.
    coverage : float, default=0.95
        Share of new images of the trained classes the "unknown" threshold should accept
        (:mod:`classifiers.novelty`): fitted on the search's held-out folds of the
        training rows, never on test rows. Families fitted in memory only.

    Attributes
    ----------
    estimator_ : scikit-learn estimator
        The final model, fitted on all training rows, predicting from features: a
        :class:`classifiers.solvers.PreconditionedLogisticRegression` (``logreg``), or
        a :class:`classifiers.platt.PlattScaledClassifier` around a ``LinearSVC``
        (``linear_svm``), a one-vs-rest ``PreconditionedLogisticRegression`` (``ovr``)
        or a :class:`classifiers.streaming_sgd.StreamingSGDClassifier` (``sgd``).
    classes_ : numpy.ndarray
        The labels, sorted; columns of :meth:`predict_proba` and :meth:`class_scores`.
    label_names_ : list of str
        Name of each class, in ``classes_`` order. The methods on features
        (:meth:`predict`, :meth:`predict_proba`, :meth:`class_scores`) speak in
        ``classes_`` (class indices for a model fitted on a store); ``label_names_``
        turns them into names, as :meth:`predict_images` does itself.
    feature_spec_ : dict or None
    calibration_paths_ : list of str or None
        The training images an int8 backbone was calibrated on (from the store, by
        :meth:`fit_store`): :meth:`image_scorer` quantizes the network again from them
        when it is no longer in the OpenVINO cache. None for other features.
    best_params_ : dict
        The chosen hyperparameter.
    search_ : SearchResult
        Held-out log-loss and accuracy of every grid value on every fold.
    used_rowspace_ : bool
        Whether the model was fitted in the principal axes of the training rows.
    solver_space_ : str
        Where it was fitted: ``"rowspace"``, ``"centred"`` or ``"features"``.
    converged_ : bool
        False when the final fit stopped at ``max_iter``.
    n_iter_ : int
        Iterations of the final fit (of the last step of its warm-started path;
        epochs for ``sgd``).
    unknown_ : classifiers.novelty.UnknownScore or None
        How unlike the training rows a row is, and the threshold above which it is
        "unknown" (:meth:`unknown_scores`); None for ``sgd`` (streamed) and for models
        saved before it existed.
    fit_seconds_ : float
    n_features_in_ : int
    """

    def __init__(self, kind: str = "logreg", grid: Sequence[float] | None = None, cv: int = 3,
                 random_state: int | np.random.RandomState | None = 0,
                 n_jobs: int | None = None, max_iter: int = 1000,
                 epochs: int = 5, solver_space: str = "auto",
                 feature_spec: dict | None = None,
                 label_names: Sequence[str] | None = None, n_repeats: int = 1,
                 class_weight: str | None = None,
                 coverage: float = DEFAULT_COVERAGE) -> None:
        self.kind = kind
        self.grid = grid
        self.cv = cv
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.max_iter = max_iter
        self.epochs = epochs
        self.solver_space = solver_space
        self.feature_spec = feature_spec
        self.label_names = label_names
        self.n_repeats = n_repeats
        self.class_weight = class_weight
        self.coverage = coverage

    # fitting --------------------------------------------------------------------------------
    _parameter_constraints: ClassVar[dict] = {
        "kind": [str],  # the name is judged by the registry, which suggests the nearest
        "grid": [None, "array-like"],
        "cv": [Interval(numbers.Integral, 2, None, closed="left")],
        "random_state": ["random_state"],
        "n_jobs": [None, Interval(numbers.Integral, None, -1, closed="right"),
                   Interval(numbers.Integral, 1, None, closed="left")],
        "max_iter": [Interval(numbers.Integral, 1, None, closed="left")],
        "epochs": [Interval(numbers.Integral, 1, None, closed="left")],
        "solver_space": [StrOptions(set(SOLVER_SPACES))],
        "feature_spec": [None, dict],
        "label_names": [None, "array-like"],
        "n_repeats": [Interval(numbers.Integral, 1, None, closed="left")],
        "class_weight": [None, StrOptions(set(CLASS_WEIGHTS))],
        "coverage": [Interval(numbers.Real, 0, 1, closed="neither")],
    }

    def _checked_params(self) -> tuple[ClassifierConfig, list[float]]:
        """The family's configuration and the grid, once every parameter is checked.

        Each parameter alone by scikit-learn (:attr:`_parameter_constraints`), then what
        depends on the family, in the same words.
        """
        try:
            self._validate_params()
        except InvalidParameterError as exc:
            raise InvalidParameter(str(exc)) from None
        config = get_classifier_config(self.kind)
        if self.solver_space == "rowspace" and not config.rowspace:
            self._refuse("solver_space", "a str among {'auto', 'features'} for kind "
                         f"{self.kind!r} ('rowspace' is exact only for L2 linear models "
                         "fitted in memory)")
        if self.solver_space == "centred" and (not config.rowspace
                                               or config.penalised_intercept):
            allowed = "'auto', 'features', 'rowspace'" if config.rowspace else "'auto', 'features'"
            self._refuse("solver_space", f"a str among {{{allowed}}} for kind {self.kind!r} "
                         "('centred' is exact only for L2 linear models whose intercept is "
                         "not penalised: logreg, ovr)")
        grid = list(config.param_grid if self.grid is None else self.grid)
        if not grid or not all(isinstance(v, numbers.Real) and v > 0 for v in grid):
            self._refuse("grid", f"None or a non-empty array-like of positive values of "
                         f"{config.param_name}")
        return config, grid

    def _refuse(self, name: str, allowed: str) -> None:
        """Raise scikit-learn's error for parameter ``name``, which must be ``allowed``."""
        raise InvalidParameter(f"The {name!r} parameter of {type(self).__name__} must be "
                               f"{allowed}. Got {getattr(self, name)!r} instead.")

    def _validate_training_data(self, X, y) -> tuple[np.ndarray, np.ndarray]:
        if y is None:
            raise UserInputError("FeatureClassifier requires y to be passed, but the target y "
                                 "is None; pass a label per row")
        # Clear messages for the common mistakes on arrays and data frames; anything
        # else is left to scikit-learn's validation.
        shape, y_shape = getattr(X, "shape", None), getattr(y, "shape", None)
        if shape is not None and len(shape) != 2:
            raise UserInputError(f"features must be a 2-D array (rows x values), got shape "
                                 f"{shape}")
        if shape is not None and y_shape and y_shape[0] != shape[0]:
            raise UserInputError(f"{shape[0]} feature rows but {y_shape[0]} labels")
        # float32 stays float32 (no copy of a large store); assert_all_finite below
        # gives the error a clearer message than validate_data's.
        X, y = validate_data(self, X, y, dtype=(np.float32, np.float64),
                             ensure_all_finite=False)
        check_feature_values(X)
        check_classification_targets(y)
        return X, y

    def fit(self, X: np.ndarray, y: np.ndarray) -> FeatureClassifier:
        """Search the grid by cross-validation on ``(X, y)``, then fit on all of it.

        Parameters
        ----------
        X : array of shape (n_samples, n_features)
            Training features (float32 is kept as is; no copy is made).
        y : array of shape (n_samples,)
            Labels of any type (integers, strings).

        Returns
        -------
        self
        """
        return self._fit(X, y, self.feature_spec, self.label_names, progress=None)

    def _fit(self, X, y, feature_spec: dict | None, label_names: Sequence[str] | None,
             progress: Progress | None, fold_runner: FoldRunner | None = None,
             calibration_paths: list[str] | None = None) -> FeatureClassifier:
        t0 = time.perf_counter()
        config, grid = self._checked_params()
        X, y = self._validate_training_data(X, y)
        check_folds(y, self.cv)
        names = _class_names(np.unique(y), label_names)
        seed = _int_seed(self.random_state)
        if config.out_of_core:
            self._fit_out_of_core(config, lambda: array_chunks(X, y), y, grid, seed)
        else:
            self._fit_in_memory(config, X, y, grid, seed, progress, fold_runner)
        self._finish(y, names, feature_spec, calibration_paths, t0)
        return self

    def _solver_space(self, config: ClassifierConfig, X: np.ndarray) -> str:
        """Where to fit: ``"rowspace"``, ``"centred"`` or ``"features"``."""
        if not config.rowspace or self.solver_space == "features":
            return "features"
        if self.solver_space != "auto":
            return self.solver_space
        if X.shape[0] < X.shape[1]:  # the row space is smaller than the features
            return "rowspace"
        # the intercept may not be centred away, and rotating alone does not shrink
        return "features" if config.penalised_intercept else "centred"

    def _fit_in_memory(self, config: ClassifierConfig, X: np.ndarray, y: np.ndarray,
                       grid: list[float], seed: int, progress: Progress | None,
                       fold_runner: FoldRunner | None = None) -> None:
        space = self._solver_space(config, X)
        splits = stratified_folds(y, self.cv, seed, self.n_repeats)
        # on the features and the search's own first k-fold split, before the rows
        # are laid out again: the threshold sees held-out training rows only
        self.unknown_ = fit_unknown_score(X, y, splits[:self.cv], coverage=self.coverage,
                                          seed=seed)
        basis, data, y_fit, layout = None, X, y, None
        if space != "features":
            # tlearn's own copy of the rows, laid out so that every held-out fold of the
            # first k-fold split is contiguous: the folds are then fitted on views of it
            order, laid_out = fold_layout(splits, self.cv)
            dtype = config.fit_dtype or X.dtype
            basis = (CentredRows(dtype=dtype) if space == "centred" else
                     RowSpaceBasis(center=not config.penalised_intercept, dtype=dtype)
                     ).fit(X, order)
            if basis.n_components_ == 0:
                basis, space = None, "features"  # constant features: nothing to project
            else:
                data, y_fit, splits = basis.train_coordinates_, y[order], laid_out
                layout = order
        self.solver_space_ = space
        self.used_rowspace_ = space == "rowspace"
        template = config.make_estimator(seed, self.max_iter, self.class_weight)
        key = config.param_key(template)
        # The final model comes along the folds' path (classifiers.search.walk_path).
        self.search_, final, caught = search_and_fit(
            template, key, grid, data, y_fit, cv=self.cv, repeats=self.n_repeats, seed=seed,
            n_jobs=self.n_jobs, name=config.param_name, fold_dtype=config.fit_dtype,
            scale_margins=config.platt, progress=progress, fold_runner=fold_runner,
            splits=splits, class_weight=self.class_weight)
        if layout is not None:  # the held-out predictions back in the order of X's rows
            held = self.search_.held_out_predicted
            self.search_.held_out_predicted = np.empty_like(held)
            self.search_.held_out_predicted[layout] = held
        parts = getattr(final, "estimators_", [final])
        self.converged_ = not any(issubclass(w.category, ConvergenceWarning) for w in caught) \
            and all(getattr(part, "converged_", True) for part in parts)
        self.n_iter_ = max(int(np.max(part.n_iter_)) for part in parts)
        if basis is not None:
            final = lift_estimator(final, basis)
            basis.release()
        self.estimator_ = self._scaled(config, final)

    def _scaled(self, config: ClassifierConfig, final):
        """``final`` with Platt-scaled probabilities, the scale the search fitted at its choice."""
        if not config.platt:
            return final
        return PlattScaledClassifier.from_fitted(
            final, self.search_.margin_scale[self.search_.best_index])

    def _fit_out_of_core(self, config: ClassifierConfig, chunks: ChunkSource, y: np.ndarray,
                         grid: list[float], seed: int) -> None:
        self.unknown_ = None  # the rows are streamed, never held: no statistics of them
        self.used_rowspace_ = False
        self.solver_space_ = "features"
        self.converged_ = True  # SGD runs a fixed number of epochs
        self.n_iter_ = self.epochs
        self.search_ = search_sgd(chunks, y, grid, cv=self.cv, random_state=seed,
                                  epochs=self.epochs, repeats=self.n_repeats,
                                  scale_margins=config.platt, class_weight=self.class_weight)
        final = config.make_estimator(seed, self.max_iter, self.class_weight).set_params(
            **{config.param_name: self.search_.best_value, "epochs": self.epochs})
        self.estimator_ = self._scaled(config, final.fit_chunks(chunks, classes=np.unique(y)))

    def _finish(self, y: np.ndarray, names: list[str], feature_spec: dict | None,
                calibration_paths: list[str] | None, t0: float) -> None:
        self.best_params_ = {self.search_.param: self.search_.best_value}
        self.classes_ = np.unique(y)
        self.label_names_ = names
        self.feature_spec_ = dict(feature_spec) if feature_spec else None
        self.calibration_paths_ = calibration_paths
        self.fit_seconds_ = time.perf_counter() - t0

    def fit_store(self, store, split: str = "train", progress: Progress | None = None, *,
                  loaded: tuple[np.ndarray, np.ndarray] | None = None,
                  fold_runner: FoldRunner | None = None) -> FeatureClassifier:
        """Fit on a split of a :class:`features.FeatureStore`, recording its specification.

        The feature specification, the class names and the int8 calibration images come
        from the store (the ``feature_spec`` and ``label_names`` parameters are not used),
        so that a saved model can rebuild its backbone without the store. ``sgd``
        streams the store chunk by chunk (memory bounded by the chunk size); the
        other families read the split into one float32 array.

        Parameters
        ----------
        store : features.FeatureStore
        split : str, default="train"
        progress : callable, optional
            ``progress(done, cv * n_repeats)``, called as cross-validation folds finish
            (families fitted in memory).
        loaded : (X, y), optional
            The split already read with ``store.load(split)`` (several families trained
            on one read); ignored by the out-of-core family.
        fold_runner : callable, optional
            What runs the cross-validation folds of the families fitted in memory
            (:data:`classifiers.search.FoldRunner`, e.g. on a Ray cluster); threads here
            by default. The out-of-core family always runs here.

        Returns
        -------
        self
        """
        spec, label_names = store.spec.to_dict(), store.label_names
        calibration = store.attrs.get("calibration_paths")
        calibration_paths = list(json.loads(calibration)) if calibration else None
        config, grid = self._checked_params()
        store_rows = np.flatnonzero(store.split_mask(split))
        if not config.out_of_core:
            X, y = loaded if loaded is not None else store.load(split)
            check_feature_values(X, str(store.path), store_rows)
            return self._fit(X, y, spec, label_names, progress, fold_runner,
                             calibration_paths)
        t0 = time.perf_counter()
        y = store.labels[store.split_mask(split)]
        check_folds(y, self.cv)
        names = _class_names(np.unique(y), label_names)

        def chunks():
            for rows, X, yc in store.iter_chunks(split):
                check_feature_values(X, str(store.path), rows)
                yield X, yc

        self.n_features_in_ = store.feature_dim
        self._fit_out_of_core(config, chunks, y, grid, _int_seed(self.random_state))
        self._finish(y, names, spec, calibration_paths, t0)
        return self

    # prediction -----------------------------------------------------------------------------
    def _validate_features(self, X) -> np.ndarray:
        check_is_fitted(self, "estimator_")
        shape = getattr(X, "shape", ())
        if len(shape) == 2 and shape[1] != self.n_features_in_:
            # scikit-learn's wording first, so generic tooling recognises it
            raise UserInputError(
                f"X has {shape[1]} features, but FeatureClassifier is expecting "
                f"{self.n_features_in_} features as input ({self.describe_features()}); use "
                "features extracted with the same backbone, layer, pooling and input size"
            )
        X = validate_data(self, X, reset=False, dtype=(np.float32, np.float64),
                          ensure_all_finite=False)
        check_feature_values(X)
        return X

    def describe_features(self) -> str:
        """``backbone/layer/pooling @ size`` of the training features, for messages."""
        spec = getattr(self, "feature_spec_", None)
        if not spec:
            return "unknown feature specification"
        return f"{spec['backbone']}/{spec['layer']}/{spec['pooling']} @ {spec['input_size']}px"

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted label of each row of features: values of ``classes_``, not names.

        For a model fitted on a store (or with ``label_names``) these are class indices;
        ``label_names_[i]`` is the name of index ``i``, and :meth:`predict_images`
        returns names directly.
        """
        X = self._validate_features(X)
        return self.estimator_.predict(X)

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Decision values, as in scikit-learn.

        Returns
        -------
        numpy.ndarray of shape (n_samples,) for two classes (positive: ``classes_[1]``),
        (n_samples, n_classes) otherwise. :meth:`class_scores` always has a column per class.
        """
        X = self._validate_features(X)
        return self.estimator_.decision_function(X)

    @available_if(_has_predict_proba)
    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities, columns in ``classes_`` order.

        ``linear_svm``, ``ovr`` and ``sgd``: Platt scaling of the margins, one scale
        fitted on the search's held-out folds (``softmax(scale * margins)``, see
        :mod:`classifiers.platt`); the class of the highest probability is the
        predicted class for every family.
        """
        X = self._validate_features(X)
        return self.estimator_.predict_proba(X)

    def class_scores(self, X: np.ndarray) -> np.ndarray:
        """A score per class, shape (n_samples, n_classes), columns in ``classes_`` order.

        Probabilities (every family); decision values only for models saved before
        the linear SVM had probabilities (for two classes ``[-d, d]``, so that the higher
        column is the predicted class). For reports, rank-k metrics and serving.
        """
        if _has_predict_proba(self):
            return self.predict_proba(X)
        scores = self.decision_function(X)
        return np.column_stack([-scores, scores]) if scores.ndim == 1 else scores

    def unknown_scores(self, X: np.ndarray) -> np.ndarray | None:
        """How unlike the training rows each row of features is (higher: less like them).

        Rows above ``unknown_.threshold`` are "unknown" (:meth:`predict_unknown`). None
        for a model without the score (``sgd``, or saved before it existed).
        """
        X = self._validate_features(X)
        score = self.__dict__.get("unknown_")
        return None if score is None else score.score(X)

    def predict_unknown(self, X: np.ndarray) -> np.ndarray | None:
        """True for rows of no trained class (score above the threshold); None as
        :meth:`unknown_scores`."""
        scores = self.unknown_scores(X)
        return None if scores is None else self.unknown_.is_unknown(scores)

    # images ---------------------------------------------------------------------------------
    def feature_extractor(self, runtime: str | None = None):
        """The backbone that makes this model's features, run by ``runtime``.

        Built on first use for each runtime, then cached. An int8 network that is no
        longer in the OpenVINO cache is quantized again from ``calibration_paths_``.
        """
        cache = self.__dict__.setdefault("_extractor_cache", {})
        if runtime not in cache:
            from features.factory import create_extractor
            from features.spec import FeatureSpec

            check_is_fitted(self, "estimator_")
            if not self.feature_spec_:
                raise UserInputError(
                    "this classifier was fitted without a feature specification; fit it with "
                    "fit_store() or pass feature_spec= so it can rebuild the backbone"
                )
            spec = FeatureSpec.from_dict(FeatureSpec.fill_defaults(self.feature_spec_))
            cache[runtime] = create_extractor(
                spec, runtime=runtime,
                calibration_paths=getattr(self, "calibration_paths_", None))
        return cache[runtime]

    def image_scorer(self, runtime: str | None = None, coverage: float | None = None
                     ) -> ImageScorer:
        """This model as scores of image pixels: backbone, then :meth:`class_scores`.

        What :meth:`predict_images`, ``tlearn predict``, ``tlearn serve`` and the
        engines classify images with.

        Parameters
        ----------
        runtime : {"tensorflow", "openvino"}, optional
            What runs the backbone (:func:`features.runtimes.resolve_runtime` for the
            features' precision by default).
        coverage : float, optional
            Accept about this share of images of the trained classes instead of the
            coverage the threshold was fitted for (from the held-out scores).
        """
        unknown: UnknownScore | None = self.__dict__.get("unknown_")
        if coverage is not None and unknown is None:
            raise UserInputError("this model has no unknown score (saved before it existed, "
                                 "or sgd): train it again to choose a coverage")
        threshold = None if unknown is None else (
            unknown.threshold if coverage is None else unknown.threshold_for(coverage))
        extractor = self.feature_extractor(runtime)

        def scores(images: np.ndarray) -> np.ndarray:
            features = extractor(images)
            if unknown is None:
                return self.class_scores(features)
            return np.column_stack([self.class_scores(features),
                                    self.unknown_scores(features)])

        return ImageScorer(extractor.spec.input_size, scores, list(self.label_names_),
                           _has_predict_proba(self), extractor.spec.runtime,
                           extractor.spec.precision, threshold)

    def predict_images(self, paths: Sequence[str], top: int = 1) -> list[dict]:
        """Classify image files (through :meth:`image_scorer`, as ``tlearn predict`` does).

        Returns
        -------
        list of dict
            One per path, in order: ``{"path", "label", "score", "top": [(label, score)...]}``
            with labels from ``label_names_``, or ``{"path", "error"}`` for a file that
            could not be read. Scores are probabilities. With the unknown score
            (:attr:`unknown_`) also ``"unknown"`` (True for an image of no trained class;
            ``label`` still names the best class) and ``"unknown_score"``.
        """
        return self.image_scorer().classify_files(paths, top)

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state.pop("_extractor_cache", None)  # Keras models: rebuilt lazily after loading
        return state

    def __setstate__(self, state: dict) -> None:
        # Models saved before the parameters took scikit-learn's names still load whole.
        if "seed" in state:
            state["random_state"] = state.pop("seed")
        if "rowspace" in state:
            old = state.pop("rowspace")
            state["solver_space"] = {True: "rowspace", False: "features"}.get(old, "auto")
        state.setdefault("n_repeats", 1)  # the search had a single k-fold split then
        state.setdefault("class_weight", None)  # every row weighed the same then
        state.setdefault("coverage", DEFAULT_COVERAGE)
        state.setdefault("unknown_", None)  # saved before the unknown score existed
        super().__setstate__(state)
