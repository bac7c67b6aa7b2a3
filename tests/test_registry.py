import numpy as np
import pytest
from sklearn.base import clone, is_classifier

from classifiers.registry import (
    CLASSIFIERS,
    ClassifierConfig,
    get_classifier_config,
    register_classifier,
    resolve_classifier_names,
)
from classifiers.solvers import PreconditionedLogisticRegression
from features.errors import UserInputError


def test_names_and_lookup():
    assert set(CLASSIFIERS) == {"logreg", "linear_svm", "ovr", "sgd"}
    assert resolve_classifier_names("all") == list(CLASSIFIERS)
    assert resolve_classifier_names("ovr") == ["ovr"]
    with pytest.raises(UserInputError, match="unknown classifier 'knn'; choose one of"):
        get_classifier_config("knn")


@pytest.mark.parametrize("name", list(CLASSIFIERS))
def test_every_entry_builds_an_estimator_with_its_tuned_parameter(name):
    config = CLASSIFIERS[name]
    estimator = config.make_estimator(random_state=3, max_iter=77)
    assert is_classifier(estimator)
    key = config.param_key(estimator)
    assert key.split("__")[-1] == config.param_name
    # the grid value reaches the estimator, on a clone as the search uses it
    tuned = clone(estimator).set_params(**{key: config.param_grid[0]})
    assert tuned.get_params()[key] == config.param_grid[0]
    assert config.param_grid == tuple(sorted(config.param_grid)) and len(config.param_grid) > 1
    if not config.out_of_core:
        assert 77 in tuned.get_params().values()  # max_iter is passed on


def test_logistic_families_share_the_warm_startable_solver():
    # ovr is one solver, not a OneVsRestClassifier whose clones lose their warm starts
    for name, one_vs_rest in (("logreg", False), ("ovr", True)):
        estimator = CLASSIFIERS[name].make_estimator(0, 10)
        assert isinstance(estimator, PreconditionedLogisticRegression)
        assert estimator.one_vs_rest is one_vs_rest
        assert CLASSIFIERS[name].param_key(estimator) == "C"
    svm = CLASSIFIERS["linear_svm"]
    assert svm.platt and svm.penalised_intercept and svm.fit_dtype is np.float64
    assert CLASSIFIERS["sgd"].out_of_core and not CLASSIFIERS["sgd"].rowspace


def test_register_refuses_a_taken_name():
    with pytest.raises(ValueError, match="already registered"):
        register_classifier(ClassifierConfig("logreg", "again", CLASSIFIERS["logreg"].factory))
