import numpy as np
import pytest

from features.backbones import build_feature_extractor
from features.errors import UserInputError
from features.extraction import extract_features
from features.store import FeatureStore, partial_path
from pipeline.datasets import load_dataset
from tests.conftest import make_image_folder

SETTINGS = {"backbone": "vgg16", "weights": "none", "input_size": 32, "pooling": "avg",
            "batch_size": 4}


@pytest.fixture
def images(tmp_path, broken_files):
    root = make_image_folder(tmp_path / "data", per_class=7)
    for _kind, path in broken_files.items():
        target = root / "cat" / path.name
        target.write_bytes(path.read_bytes())
    imgs, _ = load_dataset(root, test_size=0.25, seed=1)
    return imgs


def test_extract_writes_good_rows_and_lists_broken(tmp_path, images):
    out = tmp_path / "f.h5"
    result = extract_features(images, out, **SETTINGS)
    assert result.rows == 14 and len(result.skipped) == 3
    reasons = sorted(r for _, r in result.skipped)
    assert any("empty" in r for r in reasons) and any("truncated" in r for r in reasons)
    with FeatureStore(out) as store:
        assert store.shape == (14, 512)
        assert len(store.skipped) == 3
        X, _y = store.load()
        assert np.isfinite(X).all() and X.std() > 0
        ext = build_feature_extractor(**{k: v for k, v in SETTINGS.items()
                                         if k != "batch_size"})
        from features.images import load_image
        first = load_image(store.paths[0], 32)[None]
        np.testing.assert_allclose(X[0], ext(first)[0], rtol=1e-4, atol=1e-4)
        assert store.attrs["fingerprint"] == images.fingerprint()
        assert store.attrs["backbone"] == "vgg16"
        assert "tensorflow" in store.attrs["library_versions"]
        # the split decided from the listing is kept row by row
        listed = dict(zip(images.paths, images.split, strict=True))
        names = ["train", "test", "val"]
        assert all(names[listed[p]] == s for p, s in zip(store.paths, store.split, strict=True))


def test_interrupted_run_resumes_to_the_same_store(tmp_path, images):
    reference = tmp_path / "ref.h5"
    extract_features(images, reference, **SETTINGS)

    out = tmp_path / "f.h5"
    calls = []

    def interrupt(done, total):
        calls.append(done)
        if done >= 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract_features(images, out, progress=interrupt, **SETTINGS)
    assert not out.exists() and partial_path(out).exists()
    result = extract_features(images, out, **SETTINGS)
    assert result.resumed_rows > 0
    assert result.images_processed == len(images) - 8
    with FeatureStore(out) as a, FeatureStore(reference) as b:
        np.testing.assert_allclose(a.load()[0], b.load()[0], rtol=1e-5, atol=1e-5)
        assert a.paths == b.paths
        assert list(a.split) == list(b.split)
        assert [s.path for s in a.skipped] == [s.path for s in b.skipped]


def test_finished_store_is_never_overwritten_silently(tmp_path, images):
    out = tmp_path / "f.h5"
    extract_features(images, out, **SETTINGS)
    before = out.read_bytes()
    again = extract_features(images, out, **SETTINGS)
    assert again.up_to_date
    with pytest.raises(UserInputError, match="--overwrite"):
        extract_features(images, out, **{**SETTINGS, "pooling": "max"})
    assert out.read_bytes() == before
    replaced = extract_features(images, out, overwrite=True, **{**SETTINGS, "pooling": "max"})
    assert not replaced.up_to_date
    with FeatureStore(out) as store:
        assert store.spec.pooling == "max"


def test_partial_with_other_settings_reported(tmp_path, images):
    out = tmp_path / "f.h5"

    def stop(done, total):
        if done >= 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract_features(images, out, progress=stop, **SETTINGS)
    with pytest.raises(UserInputError, match="other settings"):
        extract_features(images, out, **{**SETTINGS, "pooling": "max"})
    assert extract_features(images, out, overwrite=True, **{**SETTINGS, "pooling": "max"}).rows


def test_all_images_broken_writes_nothing(tmp_path, broken_files):
    from features.extraction import LabeledImages

    paths = [str(p) for p in broken_files.values()]
    imgs = LabeledImages(paths, np.array([0, 1, 0]), ["a", "b"], np.zeros(3, dtype=np.uint8))
    out = tmp_path / "f.h5"
    with pytest.raises(UserInputError, match="none of the 3 images"):
        extract_features(imgs, out, **SETTINGS)
    assert not out.exists() and not partial_path(out).exists()


def test_bad_settings_write_nothing(tmp_path, images):
    out = tmp_path / "f.h5"
    with pytest.raises(UserInputError):
        extract_features(images, out, **{**SETTINGS, "layer": "nope"})
    assert not out.exists() and not partial_path(out).exists()
