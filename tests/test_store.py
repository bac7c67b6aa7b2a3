import h5py
import numpy as np
import pytest

from features.errors import UserInputError
from features.spec import FeatureSpec
from features.store import FeatureStore, FeatureStoreWriter, partial_path

SPEC = FeatureSpec("vgg16", "block5_pool", "avg", 32, "caffe", "random", "", 5)


PLANNED = [f"/img/{i}.jpg" for i in range(100)] + ["/img/bad.jpg"]


def _writer(path, key="k1", compression="none"):
    return FeatureStoreWriter(path, planned_paths=PLANNED, attrs=SPEC.to_dict(),
                              settings_key=key, feature_dim=5, label_names=["a", "b"],
                              compression=compression)


def _rows(start, n):
    feats = np.arange(start * 5, (start + n) * 5, dtype=np.float32).reshape(n, 5)
    return feats, np.arange(start, start + n) % 2


@pytest.mark.parametrize("compression", ["none", "lzf", "gzip"])
def test_write_finalize_read(tmp_path, compression):
    out = tmp_path / "s.h5"
    w = _writer(out, compression=compression)
    feats, labels = _rows(0, 7)
    w.append(feats, labels, [0, 0, 0, 0, 0, 1, 1], np.arange(7))
    w.skip([100], ["truncated image"])
    w.commit(8)
    assert not out.exists() and partial_path(out).exists()
    w.finalize()
    assert out.exists() and not partial_path(out).exists()
    with FeatureStore(out) as store:
        assert store.shape == (7, 5)
        assert store.label_names == ["a", "b"]
        assert store.spec == SPEC
        assert store.split_counts() == {"train": 5, "test": 2, "val": 0}
        X, y = store.load("test")
        np.testing.assert_array_equal(X, feats[5:])
        np.testing.assert_array_equal(y, labels[5:])
        chunks = list(store.iter_chunks("train", chunk_rows=2))
        assert [len(idx) for idx, _, _ in chunks] == [2, 2, 1]
        np.testing.assert_array_equal(np.concatenate([c for _, c, _ in chunks]), feats[:5])
        assert store.skipped[0].reason == "truncated image"
        assert store.paths[0] == "/img/0.jpg"


def test_uncommitted_rows_are_discarded_on_resume(tmp_path):
    out = tmp_path / "s.h5"
    w = _writer(out)
    w.append(*_rows(0, 3), [0, 0, 0], np.arange(3))
    w.commit(3)
    w.append(*_rows(3, 2), [0, 0], np.arange(3, 5))  # crash before commit
    w.close()
    again = _writer(out)
    assert again.items_done == 3 and again.resumed_rows == 3 and again.rows == 3
    again.close()


def test_partial_from_other_settings_is_not_resumed(tmp_path):
    out = tmp_path / "s.h5"
    _writer(out).close()
    with pytest.raises(UserInputError, match=r"other settings.*--overwrite"):
        _writer(out, key="different")


def test_corrupt_partial_reports_way_out(tmp_path):
    out = tmp_path / "s.h5"
    partial_path(out).write_bytes(b"garbage")
    with pytest.raises(UserInputError, match="--overwrite"):
        _writer(out)


def test_reader_errors(tmp_path):
    with pytest.raises(UserInputError, match="does not exist"):
        FeatureStore(tmp_path / "missing.h5")
    junk = tmp_path / "junk.h5"
    junk.write_text("not hdf5")
    with pytest.raises(UserInputError, match="not a readable HDF5"):
        FeatureStore(junk)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = [1, 2]
    with pytest.raises(UserInputError, match="not a tlearn feature store"):
        FeatureStore(other)
    out = tmp_path / "s.h5"
    w = _writer(out)
    w.close()
    with pytest.raises(UserInputError, match="unfinished extraction"):
        FeatureStore(out)


def test_truncated_store(tmp_path):
    out = tmp_path / "s.h5"
    w = _writer(out)
    w.append(*_rows(0, 50), np.zeros(50), np.arange(50))
    w.commit(50)
    w.finalize()
    data = out.read_bytes()
    out.write_bytes(data[: len(data) // 3])
    with pytest.raises(UserInputError):
        FeatureStore(out).load()


def test_load_refuses_what_does_not_fit(tmp_path):
    out = tmp_path / "s.h5"
    w = _writer(out)
    w.append(*_rows(0, 4), np.zeros(4), np.arange(4))
    w.commit(4)
    w.finalize()
    with FeatureStore(out) as store, pytest.raises(UserInputError, match="sgd"):
        store.load(max_bytes=10)


def test_bad_compression(tmp_path):
    with pytest.raises(UserInputError, match="unknown compression 'zip'"):
        _writer(tmp_path / "s.h5", compression="zip")


def test_sparse_selection_reads_only_the_rows_asked_for(tmp_path, monkeypatch):
    out = tmp_path / "s.h5"
    w = _writer(out)
    feats, labels = _rows(0, 100)
    split = np.zeros(100, dtype=np.uint8)
    split[::20] = 1  # 5 test rows spread over the whole store
    w.append(feats, labels, split, np.arange(100))
    w.commit(100)
    w.finalize()
    read_rows = []
    original = h5py.Dataset.__getitem__

    def counting(self, key):
        out = original(self, key)
        if self.name == "/features":
            read_rows.append(len(out))
        return out

    monkeypatch.setattr(h5py.Dataset, "__getitem__", counting)
    with FeatureStore(out) as store:
        X, _ = store.load("test")
    np.testing.assert_array_equal(X, feats[::20])
    assert sum(read_rows) == 5  # the covering slab would be 81 rows


@pytest.mark.parametrize("damage", ["not json", '{"a": 1}', '["train"]', None])
def test_a_damaged_split_names_attribute_is_one_clear_error(tmp_path, damage):
    out = tmp_path / "s.h5"
    w = _writer(out)
    feats, labels = _rows(0, 4)
    w.append(feats, labels, [0, 1, 0, 1], np.arange(4))
    w.commit(4)
    w.finalize()
    with h5py.File(out, "r+") as f:
        if damage is None:
            del f.attrs["split_names"]
        else:
            f.attrs["split_names"] = damage  # '["train"]': rows of split 1 have no name
    with pytest.raises(UserInputError, match=r"damaged.*split_names.*extract it again"):
        FeatureStore(out)


def test_a_link_at_the_partial_path_is_refused_not_written_through(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("mine")
    out = tmp_path / "s.h5"
    partial_path(out).symlink_to(target)
    with pytest.raises(UserInputError, match="not a file tlearn left"):
        _writer(out)
    assert target.read_text() == "mine" and partial_path(out).is_symlink()
