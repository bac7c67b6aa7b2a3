import numpy as np

from classifiers.streaming_sgd import StreamingSGDClassifier


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

