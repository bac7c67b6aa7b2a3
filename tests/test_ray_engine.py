"""The Ray engine on a real two-node cluster on loopback, against the local engine.

The fixture starts a head and a second node (``ray start --block``: separate processes,
one CPU each, stopped by their process ids at the end), so tasks and actors really
run in other processes, on two nodes, and results travel through the object store.
"""

import contextlib
import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'tlearn[ray]')")

from classifiers.estimators import FeatureClassifier  # noqa: E402
from features.errors import UserInputError  # noqa: E402
from features.extraction import extract_features  # noqa: E402
from features.settings import NetworkSettings  # noqa: E402
from features.store import FeatureStore, partial_path  # noqa: E402
from pipeline.datasets import load_dataset  # noqa: E402
from pipeline.ray_engine import BatchWork, connect, extractor_work, ray_batches  # noqa: E402
from pipeline.workflows import train_store, write_predictions  # noqa: E402
from tests.conftest import REPO_ROOT, extract, make_image_folder  # noqa: E402

SETTINGS = {"backbone": "vgg16", "weights": "none", "input_size": 32, "pooling": "avg",
            "batch_size": 4}
NETWORK = NetworkSettings("vgg16", weights="none", input_size=32, pooling="avg")
RAY = Path(sys.executable).parent / "ray"
# Loopback only, started and stopped by the test: without token authentication, so that
# a token another Ray run left in ~/.ray does not decide whether the drivers may connect.
CLUSTER_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(condition, what: str, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise RuntimeError(f"the test cluster did not come up: {what}")


def _alive_nodes(address: str) -> int:
    out = subprocess.run(  # in a child: a driver that failed to connect is left unusable
        [sys.executable, "-c", f"import ray; ray.init(address={address!r}, log_to_driver=False)"
         "; print(sum(n['Alive'] for n in ray.nodes()))"],
        capture_output=True, text=True, timeout=60, env={**os.environ, **CLUSTER_ENV})
    return int(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else 0


@pytest.fixture(scope="module")
def cluster():
    """A head and one more node on 127.0.0.1, one CPU each; yields the head's address."""
    port = _free_port()
    temp = tempfile.mkdtemp(prefix="tlray", dir="/tmp")  # Ray's sockets need a short path
    env = {**os.environ, **CLUSTER_ENV,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT),
                                                       os.environ.get("PYTHONPATH")]))}
    common = ["--block", "--num-cpus=1", "--node-ip-address=127.0.0.1",
              "--object-store-memory=100000000"]
    started = []
    patch = pytest.MonkeyPatch()
    for key, value in CLUSTER_ENV.items():  # this process's drivers too
        patch.setenv(key, value)
    log = open(Path(temp) / "cluster.log", "w")  # noqa: SIM115 (closed at teardown)
    try:
        started.append(subprocess.Popen(
            [RAY, "start", "--head", f"--port={port}", "--include-dashboard=false",
             f"--temp-dir={temp}", *common], env=env, stdout=log, stderr=log,
            start_new_session=True))
        address = f"127.0.0.1:{port}"
        _wait(lambda: _alive_nodes(address) >= 1, "head")
        started.append(subprocess.Popen(
            [RAY, "start", f"--address={address}", *common], env=env, stdout=log,
            stderr=log, start_new_session=True))
        _wait(lambda: _alive_nodes(address) >= 2, "second node")
        yield address
    finally:
        if ray.is_initialized():
            ray.shutdown()
        # Every process of the two nodes (workers run in sessions of their own, and
        # outlive their raylet for a while): stopped by id, nothing else.
        ours = _descendants([proc.pid for proc in started])
        for proc in reversed(started):  # each 'ray start --block' stops its own node
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in started:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for pid in ours:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)
        patch.undo()


def _descendants(roots: list[int]) -> list[int]:
    """The process ids below ``roots`` (from /proc), children before the roots' end."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Two classes of 7 images and three broken files."""
    root = make_image_folder(tmp_path_factory.mktemp("raydata") / "data", per_class=7)
    good = (root / "cat" / "cat_000.jpg").read_bytes()
    (root / "cat" / "empty.jpg").write_bytes(b"")
    (root / "cat" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "dog" / "not_image.png").write_text("this is not a picture\n")
    return root


def _assert_same_store(a_path: Path, b_path: Path) -> None:
    with FeatureStore(a_path) as a, FeatureStore(b_path) as b:
        assert a.paths == b.paths
        assert list(a.split) == list(b.split) and list(a.labels) == list(b.labels)
        assert list(a.groups) == list(b.groups)
        assert [(s.path, s.reason) for s in a.skipped] == [(s.path, s.reason)
                                                           for s in b.skipped]
        xa, xb = a.load()[0], b.load()[0]
        assert xa.std() > 0
        np.testing.assert_allclose(xa, xb, rtol=1e-6, atol=1e-6 * float(np.abs(xb).max()))


# A minute long, and in 2 of 4 runs on a loaded 2-core machine Ray's own driver aborted
# the whole pytest process here ("Check failed: it != submissible_tasks_.end() Tried to
# complete task that was not pending", task_manager.cc, on a retried fold task just after
# the extraction's driver shut down): run with the slow tests, not in the default suite.
@pytest.mark.slow
def test_extract_train_predict_on_a_two_node_cluster(tmp_path, data, cluster, monkeypatch):
    monkeypatch.setenv("TLEARN_ARTIFACTS", str(tmp_path / "artifacts"))
    local = extract(data, out=tmp_path / "local.h5", **SETTINGS).result
    remote = extract(data, out=tmp_path / "ray.h5", engine="ray", address=cluster,
                     **SETTINGS).result
    assert remote.rows == local.rows == 14 and len(remote.skipped) == 3
    assert not partial_path(tmp_path / "ray.h5").exists()
    _assert_same_store(tmp_path / "local.h5", tmp_path / "ray.h5")

    # The search on the cluster (one task per fold) against threads here, same features.
    with FeatureStore(tmp_path / "local.h5") as store:
        here = FeatureClassifier(kind="logreg", cv=2).fit_store(store)
        with connect(cluster) as engine:
            there = FeatureClassifier(kind="logreg", cv=2).fit_store(
                store, fold_runner=engine.fold_runner)
        X, _ = store.load()
    assert there.best_params_ == here.best_params_
    np.testing.assert_allclose(there.search_.log_loss, here.search_.log_loss, rtol=1e-9)
    np.testing.assert_allclose(there.predict_proba(X), here.predict_proba(X), atol=1e-9)

    # The workflow: train through --engine ray, then predict a folder both ways.
    outcome, = train_store(tmp_path / "ray.h5", classifier="logreg", cv=2, engine="ray",
                           address=cluster)
    rows = {}
    for engine in ("local", "ray"):
        out = tmp_path / f"pred_{engine}.csv"
        report = write_predictions(outcome.model_path, [data], out, top=2, batch_size=4,
                                   engine=engine, address=cluster if engine == "ray" else None)
        assert len(report.errors) == 3
        with open(out, newline="") as f:
            rows[engine] = list(csv.DictReader(f))
    assert [r["path"] for r in rows["ray"]] == [r["path"] for r in rows["local"]]
    for a, b in zip(rows["ray"], rows["local"], strict=True):
        assert (a["label"], a["error"]) == (b["label"], b["error"])
        if not a["error"]:
            assert float(a["score"]) == pytest.approx(float(b["score"]), abs=1e-5)


def _killing_work(marker: str, spec: dict, batch_size: int) -> BatchWork:
    """The real extractor work, whose actor kills its own process on its second batch,
    once per cluster (``marker`` records that it happened)."""
    work = extractor_work(spec, batch_size, 10**9)
    calls = []

    def compute(x):
        calls.append(1)
        if len(calls) == 2 and not os.path.exists(marker):
            Path(marker).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return work.compute(x)

    return BatchWork(work.size, work.preprocess, compute, work.width, work.max_pixels)


@pytest.mark.slow  # one more start of two actors (TensorFlow in each): ~30 s here
def test_a_killed_worker_is_replaced_and_the_store_is_the_local_one(tmp_path, data, cluster):
    images, _ = load_dataset(data, test_size=0.25, seed=1)
    reference = tmp_path / "local.h5"
    extract_features(images, reference, NETWORK, batch_size=4)
    marker = str(tmp_path / "killed")

    def on_cluster(extractor, paths, *, start, batch_size, workers, max_pixels):
        build = partial(_killing_work, marker, extractor.spec.to_dict(), batch_size)
        return ray_batches(paths, build, start=start, batch_size=batch_size, actors=2)

    out = tmp_path / "ray.h5"
    with connect(cluster):
        result = extract_features(images, out, NETWORK, batch_size=4,
                                  feature_batches=on_cluster)
    assert os.path.exists(marker), "no worker was killed: the test tested nothing"
    assert result.rows == 14 and not partial_path(out).exists()
    _assert_same_store(reference, out)


def _failing_work(when: str) -> BatchWork:
    """Work whose build or compute fails as a node with a missing weights file would."""
    error = UserInputError("weights file /models/w.h5 is missing on this node; copy it there "
                           "or pass --weights PATH")
    if when == "build":
        raise error

    def compute(x):
        raise error

    return BatchWork(8, lambda images: images, compute, 3)


@pytest.mark.parametrize("when", ["build", "compute"])
def test_a_user_error_on_a_worker_reaches_the_driver_as_its_one_line(data, cluster, when):
    paths = sorted(str(p) for p in data.rglob("*_00*.jpg"))[:4]
    with connect(cluster), pytest.raises(UserInputError) as caught:
        list(ray_batches(paths, partial(_failing_work, when), start=0, batch_size=2,
                         actors=1))
    assert str(caught.value) == ("weights file /models/w.h5 is missing on this node; copy it "
                                 "there or pass --weights PATH")


def test_a_worker_rebuilds_a_keras_hub_backbone_and_gives_the_local_features(
        tmp_path, data, cluster):
    # DINOv2: the worker imports keras-hub and rebuilds the network from the spec alone.
    pytest.importorskip("keras_hub")
    network = NetworkSettings("dinov2_small", weights="none", input_size=28, runtime="tensorflow")
    images, _ = load_dataset(data, test_size=0.25, seed=1)
    reference = tmp_path / "local.h5"
    extract_features(images, reference, network, batch_size=4)

    def on_cluster(extractor, paths, *, start, batch_size, workers, max_pixels):
        build = partial(extractor_work, extractor.spec.to_dict(), batch_size, max_pixels)
        return ray_batches(paths, build, start=start, batch_size=batch_size, actors=1)

    out = tmp_path / "ray.h5"
    with connect(cluster):
        result = extract_features(images, out, network, batch_size=4, feature_batches=on_cluster)
    assert result.rows == 14
    _assert_same_store(reference, out)
