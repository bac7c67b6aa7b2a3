import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.svm import LinearSVC

from classifiers import rowspace
from classifiers.rowspace import RowSpaceBasis, lift_estimator


def wide_data(n=90, d=1500, k=3, seed=0, noise=3.0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1, (k, d))
    y = np.arange(n) % k
    X = np.abs(centers[y] + rng.normal(0, noise, (n, d))).astype(np.float32)
    yt = np.arange(45) % k
    Xt = np.abs(centers[yt] + rng.normal(0, noise, (45, d))).astype(np.float32)
    return X, y, Xt


def cnn_like(n=80, d=2048, k=3, seed=0):
    """Sparse non-negative features (ReLU of a few latent factors) of unequal column scales."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    latent = rng.normal(size=(n, 16)) + 1.5 * np.eye(k, 16)[y]
    mixing = rng.normal(size=(16, d)) * rng.lognormal(0, 0.5, d)
    X = np.maximum(latent @ mixing + rng.normal(0, 2, (n, d)) - 2, 0).astype(np.float32)
    return X[: n // 2], y[: n // 2], X[n // 2:]


def with_copies(X, y, copies=20, rel_noise=0.0, seed=1):
    """Append copies of the first rows (duplicate photos), scaled by 1 + noise if any."""
    rng = np.random.default_rng(seed)
    extra = X[:copies] * (1 + rel_noise * rng.random((copies, X.shape[1])))
    return np.vstack([X, extra.astype(np.float32)]), np.concatenate([y, y[:copies]])


def datasets():
    """``name -> (X, y, X_test, rank of X)``: the cases real image folders produce."""
    X, y, Xt = wide_data(n=60)
    Xc, yc, Xct = cnn_like()
    return {
        "duplicates": (*with_copies(X, y), Xt, 60),
        # 1e-3: far above the float64 cut-off, far below what a float32 Gram resolves
        "near_duplicates": (*with_copies(X, y, rel_noise=1e-3), Xt, 80),
        "cnn_like": (*with_copies(Xc, yc, copies=10), Xct, 40),
        "cnn_like_near_duplicates": (*with_copies(Xc, yc, copies=10, rel_noise=1e-3), Xct, 50),
    }


DATASETS = datasets()


def tall_datasets():
    """More rows than columns (pooled features): ``name -> (X, y, X_test, rank of X - mean)``."""
    rng = np.random.default_rng(3)
    y = np.arange(240) % 3
    latent = rng.normal(size=(240, 12)) + 1.2 * np.eye(3, 12)[y]
    X = np.maximum(latent @ rng.normal(size=(12, 40)) * rng.lognormal(0, 1, 40) - 1, 0)
    X = (X + rng.normal(0, 0.3, X.shape)).astype(np.float32)
    # repeated and rescaled columns and a constant one: a rank-deficient covariance
    Xd = np.hstack([X, X[:, :6], 3 * X[:, 6:9], np.full((240, 1), 2.0, np.float32)])
    return {
        "tall_full_rank": (X[:180], y[:180], X[180:], 40),
        "tall_rank_deficient": (Xd[:180], y[:180], Xd[180:], 40),
    }


TALL = tall_datasets()

PLAIN = {
    "logreg": lambda: LogisticRegression(C=0.01, max_iter=20_000, tol=1e-10),
    "linear_svm": lambda: LinearSVC(C=0.001, max_iter=100_000, tol=1e-10),
    "ovr": lambda: OneVsRestClassifier(LogisticRegression(C=0.01, max_iter=20_000, tol=1e-10)),
}


def class_columns(scores):
    """Decision values as one column per class (binary ``d`` becomes ``[-d, d]``)."""
    scores = np.asarray(scores, dtype=np.float64)
    return np.column_stack([-scores, scores]) if scores.ndim == 1 else scores


def assert_same_decisions(ours, plain, X, rtol):
    """Decision values within ``rtol`` of their scale, and the same predictions wherever
    the plain model's top-two margin leaves room for that error.

    Where the margin is smaller, the last bits of the arithmetic (AVX2 or AVX-512,
    thread count) decide the label, so no test may depend on it.
    """
    d_ours = class_columns(ours.decision_function(X))
    d_plain = class_columns(plain.decision_function(X))
    tol = rtol * np.abs(d_plain).max()
    np.testing.assert_allclose(d_ours, d_plain, rtol=0, atol=tol)
    top_two = np.sort(d_plain, axis=1)[:, -2:]
    # an error of tol per column moves the gap between two columns by 2 * tol at most
    clear = top_two[:, 1] - top_two[:, 0] > 4 * tol
    assert clear.mean() >= 0.8, f"only {clear.sum()} of {len(clear)} margins are clear"
    np.testing.assert_array_equal(ours.predict(X)[clear], plain.predict(X)[clear])


@pytest.fixture(params=["one_block", "many_blocks"])
def block_bytes(request, monkeypatch):
    """Products over the features accumulated in one block, or in blocks of 7 columns."""
    if request.param == "many_blocks":
        monkeypatch.setattr(rowspace, "BLOCK_BYTES", 8 * 100 * 7)
    return rowspace.BLOCK_BYTES


@pytest.mark.parametrize("name", list(DATASETS))
def test_basis_spans_the_rows_exactly(name, block_bytes):
    X, _, _, rank = DATASETS[name]
    basis = RowSpaceBasis().fit(X)
    assert basis.n_components_ == rank
    Z = basis.train_coordinates_
    gram = X.astype(np.float64) @ X.T.astype(np.float64)
    np.testing.assert_allclose(Z @ Z.T, gram, rtol=0, atol=1e-12 * gram.max())
    # Projecting the rows on the basis gives them back: no direction of the data is lost,
    # and none is made of rounding noise (lift divides by each singular value).
    np.testing.assert_allclose(basis.lift(Z), X, rtol=0, atol=1e-9 * np.abs(X).max())


def test_new_rows_keep_their_inner_products_with_the_training_rows(block_bytes):
    X, _, Xt, _ = DATASETS["near_duplicates"]
    basis = RowSpaceBasis().fit(X)
    Z = basis.train_coordinates_
    np.testing.assert_allclose(basis.transform(X), Z, rtol=0, atol=1e-9 * np.abs(Z).max())
    cross = Xt.astype(np.float64) @ X.T.astype(np.float64)
    np.testing.assert_allclose(basis.transform(Xt) @ Z.T, cross, rtol=0,
                               atol=1e-12 * cross.max())


@pytest.mark.parametrize("family", list(PLAIN))
@pytest.mark.parametrize("name", list(DATASETS))
def test_fit_in_row_space_equals_plain_fit(name, family):
    X, y, Xt, _ = DATASETS[name]
    plain = PLAIN[family]().fit(X.astype(np.float64), y)
    basis = RowSpaceBasis().fit(X)
    short = lift_estimator(PLAIN[family]().fit(basis.train_coordinates_, y), basis)
    assert short.n_features_in_ == X.shape[1]
    assert_same_decisions(short, plain, Xt, rtol=1e-4)
    assert_same_decisions(short, plain, X, rtol=1e-4)


@pytest.mark.parametrize("name", list(DATASETS) + list(TALL))
def test_centred_basis_spans_the_centred_rows_with_orthogonal_zero_mean_columns(name):
    X, _, Xt, rank = {**DATASETS, **TALL}[name]
    basis = RowSpaceBasis(center=True).fit(X)
    assert basis.via_gram_ == (X.shape[0] < X.shape[1])
    # centring takes one dimension off the row space when the rows span the mean
    assert basis.n_components_ in (rank, rank - 1)
    Z = basis.train_coordinates_
    Xc = X.astype(np.float64) - X.astype(np.float64).mean(axis=0)
    scale = np.abs(Xc).max()
    np.testing.assert_allclose(Z.mean(axis=0), 0, atol=1e-9 * scale)
    gram = Z.T @ Z  # orthogonal columns, norms the singular values
    np.testing.assert_allclose(gram, np.diag(basis.singular_values_ ** 2), rtol=0,
                               atol=1e-9 * gram.max())
    np.testing.assert_allclose(basis.lift(Z), Xc, rtol=0, atol=1e-8 * scale)
    np.testing.assert_allclose(basis.transform(X), Z, rtol=0, atol=1e-8 * np.abs(Z).max())
    np.testing.assert_allclose(basis.transform(Xt) @ Z.T,
                               (Xt - X.astype(np.float64).mean(axis=0)) @ Xc.T, rtol=0,
                               atol=1e-9 * scale ** 2 * X.shape[1])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("family", ["logreg", "ovr"])
@pytest.mark.parametrize("name", ["duplicates", "cnn_like", *TALL])
def test_fit_in_the_centred_basis_equals_plain_fit(name, family, dtype):
    # The intercept is not penalised: fitting on centred coordinates and moving the
    # mean into the intercept gives the same model, on wide and tall data, of full
    # rank or not, and with float32 coordinates.
    X, y, Xt, _ = {**DATASETS, **TALL}[name]
    plain = PLAIN[family]().fit(X.astype(np.float64), y)
    basis = RowSpaceBasis(center=True, dtype=dtype).fit(X)
    assert basis.train_coordinates_.dtype == dtype
    # in float64 for scikit-learn's solver: what is tested is the rounding of the coordinates
    Z = basis.train_coordinates_.astype(np.float64)
    short = lift_estimator(PLAIN[family]().fit(Z, y), basis)
    assert short.n_features_in_ == X.shape[1]
    rtol = 1e-4 if dtype == np.float64 else 1e-3
    assert_same_decisions(short, plain, Xt, rtol=rtol)
    assert_same_decisions(short, plain, X, rtol=rtol)


@pytest.mark.parametrize("name", ["duplicates", *TALL])
def test_ordered_coordinates_are_the_rows_in_that_order(name):
    # The search lays the rows out fold by fold: the coordinates come in that order,
    # through the Gram matrix (wide) and the covariance (tall) alike.
    X, _, Xt, _ = {**DATASETS, **TALL}[name]
    order = np.random.default_rng(0).permutation(len(X))
    plain = RowSpaceBasis(center=True).fit(X)
    ordered = RowSpaceBasis(center=True).fit(X, order)
    Z = plain.train_coordinates_
    # the blocks of rows differ, which may change the last bits of each product
    np.testing.assert_allclose(ordered.train_coordinates_, Z[order], rtol=0,
                               atol=1e-12 * np.abs(Z).max())
    np.testing.assert_allclose(ordered.transform(Xt), plain.transform(Xt), rtol=0,
                               atol=1e-12 * np.abs(Z).max())


@pytest.mark.parametrize("family", ["logreg", "ovr"])
@pytest.mark.parametrize("name", ["duplicates", "cnn_like", *TALL])
def test_fit_on_centred_rows_equals_plain_fit(name, family):
    # The rows minus their mean, in float32 and in another order: the intercept is not
    # penalised, so moving the mean back into it gives scikit-learn's model, of full
    # rank or not.
    X, y, Xt, _ = {**DATASETS, **TALL}[name]
    order = np.random.default_rng(1).permutation(len(X))
    centred = rowspace.CentredRows().fit(X, order)
    Z = centred.train_coordinates_
    assert Z.dtype == np.float32 and centred.n_components_ == X.shape[1]
    mean = X.astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(Z, (X - mean)[order], rtol=0, atol=1e-6 * np.abs(X).max())
    np.testing.assert_allclose(centred.transform(Xt), Xt - mean, rtol=0, atol=1e-12)
    plain = PLAIN[family]().fit(X.astype(np.float64), y)
    short = lift_estimator(PLAIN[family]().fit(Z.astype(np.float64), y[order]), centred)
    assert short.n_features_in_ == X.shape[1]
    assert_same_decisions(short, plain, Xt, rtol=1e-3)
    assert_same_decisions(short, plain, X, rtol=1e-3)


def test_centred_rows_of_float64_features_in_float32():
    X, _, _, _ = TALL["tall_full_rank"]
    X64 = X.astype(np.float64) * 1.001
    Z = rowspace.CentredRows(dtype=np.float32).fit(X64).train_coordinates_
    assert Z.dtype == np.float32
    np.testing.assert_allclose(Z, X64 - X64.mean(axis=0), rtol=0, atol=1e-6 * np.abs(X64).max())
