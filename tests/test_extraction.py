import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from features.errors import UserInputError
from features.extraction import extract_features
from features.factory import create_extractor
from features.settings import NetworkSettings
from features.store import FeatureStore, partial_path
from pipeline.datasets import load_dataset
from tests.conftest import make_image_folder

NETWORK = NetworkSettings("vgg16", weights="none", input_size=32, pooling="avg")
SETTINGS = {"network": NETWORK, "batch_size": 4}
MAX_POOLED = replace(NETWORK, pooling="max")


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
        ext = create_extractor(NETWORK)
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
        extract_features(images, out, **{**SETTINGS, "network": MAX_POOLED})
    assert out.read_bytes() == before
    replaced = extract_features(images, out, overwrite=True, **{**SETTINGS, "network": MAX_POOLED})
    assert not replaced.up_to_date
    with FeatureStore(out) as store:
        assert store.spec.pooling == "max"


def _interrupt_after(items: int, images, out) -> None:
    """Start an extraction and stop it (as Ctrl-C would) once ``items`` images are done."""
    def stop(done, total):
        if done >= items:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract_features(images, out, progress=stop, **SETTINGS)


def test_partial_with_other_settings_reported(tmp_path, images):
    out = tmp_path / "f.h5"

    _interrupt_after(4, images, out)
    with pytest.raises(UserInputError, match="other settings"):
        extract_features(images, out, **{**SETTINGS, "network": MAX_POOLED})
    assert extract_features(images, out, overwrite=True, **{**SETTINGS, "network": MAX_POOLED}).rows


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
        extract_features(images, out, **{**SETTINGS, "network": replace(NETWORK, layer="nope")})
    assert not out.exists() and not partial_path(out).exists()


def test_edited_image_of_the_same_size_changes_the_fingerprint(tmp_path, images):
    out = tmp_path / "f.h5"

    _interrupt_after(4, images, out)
    before = images.fingerprint()
    edited = Path(images.paths[0])
    stat = edited.stat()
    data = bytearray(edited.read_bytes())
    data[-3] ^= 0xFF  # same size, other content, as a photo editor saving in place
    edited.write_bytes(bytes(data))
    os.utime(edited, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000))
    assert edited.stat().st_size == stat.st_size
    assert images.fingerprint() != before
    # the unfinished store of the old file is not resumed with rows of the new one
    with pytest.raises(UserInputError, match="other settings or images"):
        extract_features(images, out, **SETTINGS)


# A real 'tlearn extract' process that SIGKILLs itself at a chosen point of a chosen batch.
_KILLER = """
import os, signal, sys
from features import batches, store

point, batch = sys.argv[1], int(sys.argv[2])
calls = {"append": 0, "commit": 0, "decode": 0}

def die_at(name):
    calls[name] += 1
    if point == name and calls[name] == batch:
        os.kill(os.getpid(), signal.SIGKILL)

original_append = store.FeatureStoreWriter._append

def append(dataset, values):
    original_append(dataset, values)
    if dataset.name == "/features":
        die_at("append")  # features of the batch written, its labels and paths not yet

store.FeatureStoreWriter._append = staticmethod(append)
original_commit = store.FeatureStoreWriter.commit

def commit(self, items_done):
    die_at("commit")  # the whole batch written, not yet committed
    original_commit(self, items_done)

store.FeatureStoreWriter.commit = commit
original_decode = batches.decode_batch

def decode(*args):
    out = original_decode(*args)
    die_at("decode")  # a batch decoded, while earlier batches run through the network
    return out

batches.decode_batch = decode
from pipeline.cli import main
sys.argv = ["tlearn", "extract", *sys.argv[3:]]
main()
"""


def test_store_survives_sigkill_mid_batch_and_resumes_to_the_same_rows(tmp_path,
                                                                      broken_files):
    # 48 files in batches of 4: every kill below stops a run long before the end,
    # whatever the decode threads had prefetched, so each run really is interrupted.
    root = make_image_folder(tmp_path / "data", classes=("a", "b", "c"), per_class=15)
    for path in broken_files.values():
        (root / "b" / path.name).write_bytes(path.read_bytes())
    args = [str(root), "--weights", "none", "--input-size", "32", "--pooling", "avg",
            "--batch-size", "4", "--backbone", "vgg16", "--workers", "1"]
    env = {**os.environ, "TLEARN_ARTIFACTS": str(tmp_path / "artifacts"),
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}

    def run(out, *kill):
        return subprocess.run([sys.executable, "-c", _KILLER, *(kill or ("none", "0")), *args,
                               "--out", str(out)], env=env, capture_output=True, text=True,
                              timeout=300)

    reference = tmp_path / "reference.h5"
    assert run(reference).returncode == 0
    out = tmp_path / "killed.h5"
    for point, batch in (("append", 2), ("commit", 2), ("decode", 3), ("append", 1)):
        done = run(out, point, str(batch))
        assert done.returncode == -signal.SIGKILL, done.stderr
        assert not out.exists() and partial_path(out).exists()
    finished = run(out)
    assert finished.returncode == 0, finished.stderr
    assert "resumed an interrupted run" in finished.stdout
    with FeatureStore(out) as a, FeatureStore(reference) as b:
        assert a.paths == b.paths
        np.testing.assert_array_equal(a.labels, b.labels)
        assert list(a.split) == list(b.split)
        np.testing.assert_array_equal(a.groups, b.groups)
        np.testing.assert_allclose(a.load()[0], b.load()[0], rtol=1e-6, atol=1e-6)
        assert [(s.path, s.reason) for s in a.skipped] == [(s.path, s.reason)
                                                            for s in b.skipped]


# A real 'tlearn extract' process that, before appending the rows of batch number N,
# pauses until told to go on ("pause"), or fills the disk of its --out ("fill"; with
# "fill-unchecked" the free-space check is switched off, so HDF5 itself meets the full disk).
_HOOKED = """
import os, sys, time
from pathlib import Path
from features import store
from tests.conftest import fill_disk

action, at, folder = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
calls = [0]
original_append = store.FeatureStoreWriter.append

def append(self, *args, **kwargs):
    calls[0] += 1
    if calls[0] == at:
        if action == "pause":
            (folder / "ready").touch()
            while not (folder / "go").exists():
                time.sleep(0.05)
        else:
            fill_disk(folder)
    original_append(self, *args, **kwargs)

store.FeatureStoreWriter.append = append
if action == "fill-unchecked":
    store._free_bytes = lambda folder: 1 << 62
from pipeline.cli import main
sys.argv = ["tlearn", "extract", *sys.argv[4:]]
main()
"""


def _extract_command(tmp_path, root, out, *extra, hook=("none", "0")):
    args = [str(root), "--weights", "none", "--input-size", "32", "--pooling", "avg",
            "--batch-size", "4", "--backbone", "vgg16", "--workers", "1", "--out", str(out),
            *extra]
    env = {**os.environ, "TLEARN_ARTIFACTS": str(tmp_path / "artifacts"),
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    return [sys.executable, "-c", _HOOKED, *hook[:2], str(Path(out).parent), *args], env


def _run_extract(tmp_path, root, out, *extra, hook=("none", "0")):
    command, env = _extract_command(tmp_path, root, out, *extra, hook=hook)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def _error_line(done) -> str:
    assert "Traceback" not in done.stderr and "HDF5" not in done.stderr, done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_a_second_extract_on_the_same_out_is_refused_and_the_first_finishes(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=8)  # 16 images, 4 batches
    out = tmp_path / "f.h5"
    command, env = _extract_command(tmp_path, root, out, hook=("pause", "2"))
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        while not (tmp_path / "ready").exists():  # the first run is mid-store
            assert first.poll() is None, first.communicate()
            time.sleep(0.1)
        for extra in ((), ("--overwrite",)):
            second = _run_extract(tmp_path, root, out, *extra)
            assert second.returncode == 2, second.stderr
            line = _error_line(second)
            assert "another tlearn run is writing" in line and "--overwrite" not in line
        (tmp_path / "go").touch()
        _stdout, stderr = first.communicate(timeout=300)
    finally:
        first.kill()
        first.wait()
    assert first.returncode == 0, stderr
    assert not partial_path(out).exists()
    with FeatureStore(out) as store:
        assert store.n_rows == 16 and len(set(store.paths)) == 16


def test_a_full_disk_stops_extract_with_one_line_and_a_resumable_store(tmp_path, tmpfs):
    root = make_image_folder(tmp_path / "data", per_class=8)
    disk = tmpfs("disk", size="16m")
    out = disk / "f.h5"
    full = _run_extract(tmp_path, root, out, hook=("fill", "3"))
    assert full.returncode == 2, full.stderr
    line = _error_line(full)
    assert "almost full" in line and "resume" in line
    assert not out.exists() and partial_path(out).exists()
    (disk / "ballast").unlink()
    again = _run_extract(tmp_path, root, out)
    assert again.returncode == 0, again.stderr
    assert "resumed an interrupted run after 8 rows" in again.stdout
    with FeatureStore(out) as store:
        assert store.n_rows == 16 and sorted(store.paths) == sorted(
            str(p) for p in root.rglob("*") if p.is_file())


def test_a_disk_full_inside_hdf5_is_one_line_and_a_clean_restart(tmp_path, tmpfs):
    root = make_image_folder(tmp_path / "data", per_class=8)
    disk = tmpfs("disk", size="16m")
    out = disk / "f.h5"
    full = _run_extract(tmp_path, root, out, hook=("fill-unchecked", "1"))
    assert full.returncode == 2, full.stderr  # not a crash (it was a segmentation fault)
    line = _error_line(full)
    assert "No space left on device" in line and "removed" in line
    assert not out.exists() and not partial_path(out).exists()
    (disk / "ballast").unlink()
    again = _run_extract(tmp_path, root, out)
    assert again.returncode == 0, again.stderr
    with FeatureStore(out) as store:
        assert store.n_rows == 16


def test_a_short_batch_runs_at_its_own_size_not_the_batch_size(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=2)  # 4 images
    imgs, _ = load_dataset(root, test_size=0.25, seed=1)
    extractor = create_extractor(NETWORK)
    shapes = []
    model = extractor.model

    class Recording:
        def predict_on_batch(self, x):
            shapes.append(x.shape)
            return model.predict_on_batch(x)

    extractor.model = Recording()
    result = extract_features(imgs, tmp_path / "f.h5", extractor=extractor, batch_size=512)
    assert result.rows == 4
    assert shapes and max(s[0] for s in shapes) <= 4  # was padded to 512


def test_out_that_is_a_folder_or_below_a_file_is_refused_before_any_work(tmp_path, images):
    folder = tmp_path / "outdir"
    folder.mkdir()
    with pytest.raises(UserInputError, match="is a folder"):
        extract_features(images, folder, overwrite=True, **SETTINGS)
    assert not (tmp_path / "outdir.partial").exists() and folder.is_dir()
    (tmp_path / "afile").write_text("mine")
    with pytest.raises(UserInputError, match="afile is a file, not a folder"):
        extract_features(images, tmp_path / "afile" / "x.h5", **SETTINGS)
    assert (tmp_path / "afile").read_text() == "mine"


def test_settings_and_a_ready_extractor_together_are_refused(tmp_path, images):
    # with both, one of them would silently decide the network and the other be ignored
    with pytest.raises(TypeError, match="network settings or a ready extractor, not both"):
        extract_features(images, tmp_path / "f.h5", NETWORK, extractor=create_extractor(NETWORK))
    assert not (tmp_path / "f.h5").exists()


def test_every_network_setting_is_part_of_the_request_key(tmp_path, images, monkeypatch):
    # A store answers "up to date" from its request key: a setting left out of it would
    # let a store of other features pass for this one.
    import dataclasses

    import features.extraction as extraction

    @dataclasses.dataclass(frozen=True)
    class WithANewSetting(NetworkSettings):
        sharpen: float = 0.5

    class Stop(Exception):
        pass

    def record(payload):
        raise Stop(payload)

    monkeypatch.setattr(extraction, "settings_key", record)
    with pytest.raises(Stop) as stopped:
        extract_features(images, tmp_path / "f.h5", WithANewSetting("vgg16", weights="none"))
    assert stopped.value.args[0]["sharpen"] == 0.5
