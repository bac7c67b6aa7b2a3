import numpy as np

from classifiers.platt import STREAM_SCALES
from classifiers.streaming_sgd import StreamingSGDClassifier, array_chunks, search_sgd


def tall_data(n=300, d=6, k=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    X = rng.normal(0, 1, (n, d)) + np.eye(k, d)[y] * 3
    return X.astype(np.float32), y


def test_fit_chunks_matches_fit():
    X, y = tall_data()
    a = StreamingSGDClassifier(alpha=1e-3, epochs=3).fit(X, y)
    b = StreamingSGDClassifier(alpha=1e-3, epochs=3).fit_chunks(
        lambda: [(X[i:i + 1024], y[i:i + 1024]) for i in range(0, len(y), 1024)],
        classes=np.unique(y))
    np.testing.assert_allclose(a.decision_function(X), b.decision_function(X))



def test_search_scores_log_loss_and_accuracy_on_every_fold_of_every_repeat():
    X, y = tall_data(n=240)
    grid = [1e-4, 1e-2, 1.0]
    result = search_sgd(lambda: array_chunks(X, y, rows=50), y, grid, cv=3, random_state=0,
                        epochs=2, repeats=2)
    assert result.log_loss.shape == result.accuracy.shape == (3, 6)
    assert np.isfinite(result.log_loss).all() and (result.log_loss > 0).all()
    assert result.best_value == grid[int(np.argmin(result.mean_log_loss))]
    assert result.to_dict()["repeats"] == 2


def test_search_fits_a_margin_scale_per_alpha_without_changing_the_choice():
    X, y = tall_data(n=240)
    X = X + np.random.default_rng(1).normal(0, 2, X.shape).astype(np.float32)
    grid = [1e-4, 1e-3, 1e-2, 1.0]

    def search(**scale):
        return search_sgd(lambda: array_chunks(X, y, rows=50), y, grid, cv=3,
                          random_state=0, epochs=2, **scale)

    own, scaled = search(), search(scale_margins=True)
    assert own.margin_scale is None and len(scaled.margin_scale) == 4
    # found inside the grid, not stopped at one of its ends
    assert all(STREAM_SCALES[0] < s < STREAM_SCALES[-1] for s in scaled.margin_scale)
    # alpha is still chosen by SGD's own held-out probabilities
    np.testing.assert_array_equal(scaled.log_loss, own.log_loss)
    assert scaled.best_value == own.best_value
    # and the loss of the scaled probabilities, which the final model gives, is reported
    assert own.scaled_log_loss is None and own.to_dict()["mean_scaled_log_loss"] is None
    assert scaled.scaled_log_loss.shape == scaled.log_loss.shape == (4, 3)
    assert np.isfinite(scaled.scaled_log_loss).all() and (scaled.scaled_log_loss > 0).all()
    assert not np.allclose(scaled.scaled_log_loss, scaled.log_loss)
    assert scaled.to_dict()["mean_scaled_log_loss"] == scaled.scaled_log_loss.mean(1).tolist()
