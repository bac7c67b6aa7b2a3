"""The unknown score: images of no trained class are flagged, known ones accepted."""

import io

import joblib
import numpy as np
import pytest

from classifiers.estimators import FeatureClassifier
from classifiers.novelty import DEFAULT_RANK
from features.errors import UserInputError
from features.spec import FeatureSpec
from features.store import FeatureStore, FeatureStoreWriter

SPEC = FeatureSpec("vgg16", "block5_pool", "avg", 32, "caffe", "random", "", 24)


def gaussian_classes(rng, n_per_class: int, dim: int = 24, classes: int = 3):
    """Three Gaussian classes, apart along their own axes."""
    y = np.repeat(np.arange(classes), n_per_class)
    X = rng.normal(size=(len(y), dim)).astype(np.float32)
    X[:, :classes] += 4.0 * np.eye(classes, dtype=np.float32)[y]
    return X, y


def strangers(rng, n: int, dim: int = 24) -> np.ndarray:
    """Rows of no class: shifted by 3 along every axis the classes never move on."""
    X = rng.normal(size=(n, dim)).astype(np.float32)
    X[:, 3:] += 3.0
    return X


def test_strangers_are_flagged_and_known_rows_accepted_at_about_the_coverage():
    rng = np.random.default_rng(0)
    model = FeatureClassifier(coverage=0.9).fit(*gaussian_classes(rng, 200))
    known, _ = gaussian_classes(rng, 300)
    accepted = 1 - model.predict_unknown(known).mean()
    assert 0.8 <= accepted <= 0.99  # about 90 %, never all nor most flagged
    assert model.predict_unknown(strangers(rng, 300)).mean() >= 0.95
    # the label still names the best class, for strangers too
    assert set(model.predict(strangers(rng, 30))) <= {0, 1, 2}
    summary = model.unknown_.summary()
    assert summary["coverage"] == 0.9 and 0.85 <= summary["held_out_coverage"] <= 0.95
    # a higher coverage is a higher threshold: fewer known rows flagged
    strict = FeatureClassifier(coverage=0.99).fit(*gaussian_classes(np.random.default_rng(0),
                                                                    200))
    assert strict.unknown_.threshold > model.unknown_.threshold
    # another coverage at prediction time, from the held-out scores the model keeps
    assert model.unknown_.threshold_for(0.9) == pytest.approx(model.unknown_.threshold,
                                                              rel=0.05)
    assert model.unknown_.threshold_for(0.5) < model.unknown_.threshold
    with pytest.raises(UserInputError, match="--coverage must be between 0 and 1"):
        model.unknown_.threshold_for(1.5)


@pytest.mark.parametrize("coverage", [0, 1, 1.5, -0.2])
def test_a_coverage_outside_zero_one_is_refused(coverage):
    X, y = gaussian_classes(np.random.default_rng(0), 10)
    with pytest.raises(UserInputError, match="'coverage' parameter"):
        FeatureClassifier(coverage=coverage).fit(X, y)


@pytest.mark.parametrize("coverage", [0, 1, 1.5, -0.2])
def test_train_and_predict_refuse_a_bad_coverage_with_the_same_line(coverage, tmp_path):
    from pipeline.workflows.train import train_store

    X, y = gaussian_classes(np.random.default_rng(0), 10)
    model = FeatureClassifier().fit(X, y)
    with pytest.raises(UserInputError) as at_predict:
        model.unknown_.threshold_for(coverage)
    # refused before the store is opened (it does not exist)
    with pytest.raises(UserInputError) as at_train:
        train_store(tmp_path / "missing.h5", coverage=coverage)
    assert str(at_train.value) == str(at_predict.value) == str(check_coverage_error(coverage))


def check_coverage_error(coverage: float) -> UserInputError:
    from classifiers.novelty import check_coverage

    with pytest.raises(UserInputError) as refused:
        check_coverage(coverage)
    return refused.value


def _store(path, X, y, split) -> FeatureStore:
    writer = FeatureStoreWriter(path, planned_paths=[f"/img_{i}.jpg" for i in range(len(X))],
                                attrs=SPEC.to_dict(), settings_key="k", feature_dim=X.shape[1],
                                label_names=["a", "b", "c"])
    writer.append(X, y, split, np.arange(len(X)))
    writer.commit(len(X))
    writer.finalize()
    return FeatureStore(path)


def test_the_threshold_is_fitted_on_training_rows_only(tmp_path):
    # Test rows replaced by others, shuffled or made strangers: the fitted score is the same.
    rng = np.random.default_rng(1)
    X, y = gaussian_classes(rng, 80)
    split = np.where(np.arange(len(y)) % 4 == 0, 1, 0)  # 1: test
    thresholds, means = [], []
    for variant in range(3):
        X_v = X.copy()
        test = np.flatnonzero(split == 1)
        if variant == 1:
            X_v[test] = X[rng.permutation(test)]
        if variant == 2:
            X_v[test] = strangers(rng, len(test))
        with _store(tmp_path / f"s{variant}.h5", X_v, y, split) as store:
            model = FeatureClassifier(cv=3).fit_store(store)
        thresholds.append(model.unknown_.threshold)
        means.append(model.unknown_.distance.means)
    assert thresholds[0] == thresholds[1] == thresholds[2]
    np.testing.assert_array_equal(means[0], means[2])


@pytest.mark.slow
def test_the_model_file_stays_small_for_wide_features_and_many_rows():
    # 25,088 values (VGG16 flattened): the score keeps class means and DEFAULT_RANK axes,
    # not the training features, so the file does not grow with the rows.
    rng = np.random.default_rng(2)
    dim, sizes = 25_088, []
    for n_per_class in (70, 140):
        X, y = gaussian_classes(rng, n_per_class, dim=dim, classes=2)
        buffer = io.BytesIO()
        joblib.dump(FeatureClassifier(cv=2, grid=[1.0]).fit(X, y), buffer)
        sizes.append(buffer.tell())
    assert sizes[1] < 1.05 * sizes[0]
    # class means + axes + the classifier's weights, float32 and float64 at worst
    assert sizes[1] < (2 + DEFAULT_RANK) * dim * 4 + 2 * 2 * dim * 8 + 2**20
    assert sizes[1] < X.nbytes  # less than the training features themselves


def test_models_without_the_score_say_so():
    X, y = gaussian_classes(np.random.default_rng(3), 30)
    model = FeatureClassifier().fit(X, y)
    state = model.__getstate__()
    del state["unknown_"], state["coverage"]  # as pickled before the score existed
    old = FeatureClassifier.__new__(FeatureClassifier)
    old.__setstate__(state)
    assert old.unknown_scores(X) is None and old.predict_unknown(X) is None
    assert old.coverage == 0.95


def test_risk_coverage_by_hand():
    from classifiers.novelty import risk_coverage, test_figures

    # accepted lowest score first: 0.1 right, 0.2 right, 0.3 wrong, 0.4 wrong
    scores, correct = [0.4, 0.1, 0.3, 0.2], [False, True, False, True]
    np.testing.assert_allclose(risk_coverage(scores, correct),
                               [[0.25, 1.0], [0.5, 1.0], [0.75, 2 / 3], [1.0, 0.5]])
    # equal scores are accepted together: no threshold accepts one without the other
    np.testing.assert_allclose(risk_coverage([0.1, 0.2, 0.2, 0.3], [True, True, False, False]),
                               [[0.25, 1.0], [0.75, 2 / 3], [1.0, 0.5]])
    figures = test_figures(scores, correct, threshold=0.2)
    assert figures["test_accepted"] == 0.5 and figures["test_accepted_accuracy"] == 1.0
    # at most `most` points, the last always every image
    many = risk_coverage(np.arange(1000.0), np.ones(1000, bool), most=11)
    assert len(many) == 11 and many[-1] == [1.0, 1.0] and many[0] == [0.001, 1.0]


def test_the_score_is_kept_as_json_bit_for_bit():
    import json

    from classifiers.novelty import UnknownScore

    X, y = gaussian_classes(np.random.default_rng(0), 30)
    score = FeatureClassifier().fit(X, y).unknown_
    back = UnknownScore.from_json(json.loads(json.dumps(score.to_json())))
    np.testing.assert_array_equal(back.score(X), score.score(X))
    assert back.threshold == score.threshold
    assert back.threshold_for(0.5) == score.threshold_for(0.5)


def test_the_score_reads_the_direction_of_the_features_not_their_length():
    # the length of a row of features mostly follows an image's contrast: a known image
    # twice as bright is as known, and a stranger scaled to the known rows' length stays
    # a stranger
    rng = np.random.default_rng(0)
    X, y = gaussian_classes(rng, 200)
    X[:, :] += 6.0  # features are positive, as after a ReLU
    model = FeatureClassifier().fit(X, y)
    known, _ = gaussian_classes(rng, 50)
    known += 6.0
    np.testing.assert_allclose(model.unknown_scores(3.0 * known), model.unknown_scores(known),
                               rtol=1e-4)
    assert model.predict_unknown(0.3 * known).mean() < 0.2
