"""The Ray engine: features, class scores and cross-validation folds computed on a cluster.

Images (extraction, batch prediction) become a Ray Dataset of ``(position, path)``
rows, cut into blocks of one batch each; ``map_batches`` runs them through a pool of
actors (:class:`BatchActor`), each building its network once, with its thread pools
sized to the CPUs Ray gave it (and one GPU where the cluster has GPUs). An actor does
the local engine's per-batch work (:func:`features.batches.compute_batch`: the one
image reader, then the extractor's or the model's own compute) and returns one row
per image: its position, whether it decoded, its values, the reason it did not.

Workers read the image files themselves, at the paths the driver planned: every node
must see the same paths (shared storage). Shipping the bytes from the driver would
make the driver read every file and send it once more over the network, turning it
into the bottleneck the cluster is there to remove; the paths are a few bytes each.

The driver, this process, receives the rows in file order (Ray Data's
``preserve_order``, and a reorder buffer behind it, so order never depends on
scheduling) and writes the same files as the local engine through the same writers.
Ray restarts a killed actor and retries its batch (``max_restarts`` and
``max_task_retries``, Ray Data's defaults for actor pools).

Cross-validation (:class:`RayFoldRunner`) puts the training rows in the object store
once and runs one task per fold; the final fit runs on the driver, as locally.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import ray

from features.batches import Compute, ComputedBatch, Preprocess, compute_batch
from features.errors import UserInputError
from features.images import DEFAULT_MAX_PIXELS
from features.neighbours import SIGNATURE_SIZE
from features.prediction import raw_pixels


@dataclass
class BatchWork:
    """What an actor runs on each batch: built once per actor by a picklable function.

    Attributes
    ----------
    size : int
        Side of the square images.
    preprocess, compute : callable
        As :func:`features.batches.compute_batch`.
    width : int
        Values per image (features or classes).
    max_pixels : int
    """

    size: int
    preprocess: Preprocess
    compute: Compute
    width: int
    max_pixels: int = DEFAULT_MAX_PIXELS


def size_thread_pools() -> int:
    """Size this worker's TensorFlow thread pools and its OpenVINO networks to the CPUs Ray
    assigned it; returns that.

    Without it every actor would start one thread per core of its node, and several
    actors on one node would fight over the cores.
    """
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    threads = max(1, round(cpus))
    from features.devices import limit_compute_threads
    from features.runtimes import limit_cpu_threads

    limit_cpu_threads(threads)  # --runtime openvino: the same share of the cores
    limit_compute_threads(threads)  # the Keras backend's pools, in a fresh worker
    return threads


def extractor_work(spec: dict, batch_size: int, max_pixels: int) -> BatchWork:
    """The extraction of the local engine, for the extractor of ``spec`` rebuilt here."""
    from features.extraction import feature_compute
    from features.factory import create_extractor
    from features.spec import FeatureSpec

    feature_spec = FeatureSpec.from_dict(spec)
    extractor = create_extractor(feature_spec, runtime=feature_spec.runtime)
    return BatchWork(extractor.spec.input_size, extractor.preprocess_input,
                     feature_compute(extractor, batch_size), extractor.spec.feature_dim,
                     max_pixels)


def classifier_work(model_path: str, runtime: str | None, max_pixels: int) -> BatchWork:
    """The scoring of the local engine, for the saved model at ``model_path`` loaded here."""
    from pipeline.image_classifiers import load_image_classifier

    model = load_image_classifier(model_path, runtime=runtime)
    columns = len(model.label_names) + (model.unknown_threshold is not None)
    return BatchWork(model.input_size, raw_pixels, model.scores, columns,
                     max_pixels)


class BatchActor:
    """A Ray Data callable class: builds its :class:`BatchWork` once, then maps batches.

    A batch is ``{"position", "path"}``; the result is ``{"position", "ok", "values",
    "reason"}``, one row per image (values are zeros where the image did not decode).
    """

    def __init__(self, build: Callable[[], BatchWork]) -> None:
        size_thread_pools()
        # An actor that fails to start reaches the driver as text only (ActorDiedError),
        # so a user mistake found while building (a weights file missing on this node)
        # is raised from the first batch instead, where Ray keeps the exception itself.
        self.failed: UserInputError | None = None
        try:
            self.work = build()
        except UserInputError as exc:
            self.failed = exc

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.failed is not None:
            raise self.failed
        w = self.work
        paths = [str(p) for p in batch["path"]]
        done = compute_batch(paths, 0, size=w.size, preprocess=w.preprocess, compute=w.compute,
                             max_pixels=w.max_pixels)
        n = len(paths)
        values = np.zeros((n, w.width), dtype=np.float32)
        signatures = np.zeros((n, SIGNATURE_SIZE), dtype=np.float16)
        ok = np.zeros(n, dtype=bool)
        if done.good:
            values[done.good] = done.values
            signatures[done.good] = done.signatures
            ok[done.good] = True
        reasons = [""] * n
        for i, reason in done.bad:
            reasons[i] = reason
        return {"position": np.asarray(batch["position"], dtype=np.int64), "ok": ok,
                "values": values, "signatures": signatures,
                "reason": np.array(reasons, dtype=object)}


def _user_error(exc: BaseException) -> UserInputError | None:
    """The :class:`UserInputError` a remote failure carries, if any (a missing weights
    file on a worker...), so the CLI prints its one line instead of a remote traceback.

    Ray wraps a remote exception in a ``RayTaskError`` whose ``cause`` is the original
    (an actor that failed to start: ``ActorDiedError``, with the creation error as its
    cause); the wrapper's own text is the whole remote traceback, so the message is taken
    from the original's arguments.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        cause = getattr(exc, "cause", None)
        if isinstance(cause, BaseException) and cause is not exc:
            exc = cause
            continue
        if isinstance(exc, UserInputError):
            # Ray Data appends its retry advice on lines of its own; tlearn's is the first
            return UserInputError(str(exc.args[0]).splitlines()[0] if exc.args else "")
        exc = exc.__cause__
    return None


@dataclass
class RayEngine:
    """The engine, connected to a cluster: how many actors, with what resources.

    Attributes
    ----------
    actors : int
        Actors in each pool: one per GPU where the cluster has GPUs, else one per CPU.
    cpus_per_actor, gpus_per_actor : float
    """

    actors: int
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0

    @classmethod
    def from_cluster(cls) -> RayEngine:
        """Sized to the cluster's resources at connection time."""
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        if gpus:
            return cls(actors=gpus, cpus_per_actor=1.0, gpus_per_actor=1.0)
        return cls(actors=max(1, int(resources.get("CPU", 1))))

    def batches(self, paths: Sequence[str], build: Callable[[], BatchWork], *, start: int,
                batch_size: int) -> Iterator[ComputedBatch]:
        """Every batch of ``paths[start:]`` computed by an actor pool, in file order."""
        yield from ray_batches(paths, build, start=start, batch_size=batch_size,
                               actors=self.actors, num_cpus=self.cpus_per_actor,
                               num_gpus=self.gpus_per_actor)

    def feature_batches(self, extractor, paths: Sequence[str], *, start: int, batch_size: int,
                        workers: int = 2, max_pixels: int = DEFAULT_MAX_PIXELS
                        ) -> Iterator[ComputedBatch]:
        """:data:`features.extraction.FeatureBatches` on the cluster (``workers`` unused:
        each actor decodes its own batches)."""
        build = partial(extractor_work, extractor.spec.to_dict(), batch_size, max_pixels)
        return self.batches(paths, build, start=start, batch_size=batch_size)

    def score_batches(self, model_path: Path, runtime: str | None) -> Callable:
        """:data:`features.prediction.ScoreBatches` of the saved model at ``model_path``."""
        build = partial(classifier_work, str(Path(model_path).resolve()), runtime,
                        DEFAULT_MAX_PIXELS)

        def source(paths: Sequence[str], *, start: int = 0, batch_size: int = 32,
                   workers: int = 2) -> Iterator[ComputedBatch]:
            return self.batches(paths, build, start=start, batch_size=batch_size)

        return source

    @property
    def fold_runner(self) -> RayFoldRunner:
        return RayFoldRunner(self.cpus_per_actor)


def ray_batches(paths: Sequence[str], build: Callable[[], BatchWork], *, start: int,
                batch_size: int, actors: int, num_cpus: float = 1.0, num_gpus: float = 0.0
                ) -> Iterator[ComputedBatch]:
    """Run ``paths[start:]`` through a pool of ``actors`` :class:`BatchActor` s, in order.

    Blocks of ``batch_size`` rows (the last one shorter), one ``map_batches`` call each,
    so every actor sees the batch shapes the local engine sees. Rows come back in file
    order whatever the scheduling: Ray Data preserves the input order, and the
    positions each row carries reassemble contiguous batches behind it.

    Raises
    ------
    UserInputError
        What the actors raised as one (a weights file missing on a node...).
    RuntimeError
        If Ray returned fewer rows than it was given.
    """
    import pandas as pd

    total = len(paths)
    if start >= total:
        return
    blocks = [pd.DataFrame({"position": np.arange(b, min(b + batch_size, total)),
                            "path": [str(p) for p in paths[b:b + batch_size]]})
              for b in range(start, total, batch_size)]
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    # the actor's own exception, not Ray Data's "UDF failed" wrapper (which loses it)
    context.raise_original_map_exception = True
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # its notices would break the bar
    dataset = ray.data.from_pandas(blocks).map_batches(
        BatchActor, fn_constructor_args=(build,), batch_size=batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=max(1, min(actors, len(blocks)))),
        num_cpus=num_cpus, num_gpus=num_gpus or None)
    pending: dict[int, tuple[bool, np.ndarray, np.ndarray, str]] = {}
    expected = start
    try:
        for out in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            for position, ok, values, signature, reason in zip(
                    out["position"], out["ok"], out["values"], out["signatures"], out["reason"],
                    strict=True):
                pending[int(position)] = (bool(ok), values, signature, str(reason))
            while expected in pending:
                begin = expected
                good, rows, signatures, bad = [], [], [], []
                while expected in pending and expected - begin < batch_size:
                    ok, values, signature, reason = pending.pop(expected)
                    if ok:
                        good.append(expected - begin)
                        rows.append(values)
                        signatures.append(signature)
                    else:
                        bad.append((expected - begin, reason))
                    expected += 1
                yield ComputedBatch(
                    begin, expected, good, bad,
                    values=np.stack(rows) if rows else np.empty((0, 0), np.float32),
                    signatures=np.stack(signatures) if signatures else None)
    except ray.exceptions.RayError as exc:
        error = _user_error(exc)
        if error is None:
            raise
        raise error from None
    if expected != total:
        raise RuntimeError(f"the Ray cluster returned rows up to {expected} of {total}")


def run_fold(fold: Callable, X: np.ndarray, y: np.ndarray, train: np.ndarray,
             test: np.ndarray):
    """One fold of :func:`classifiers.search.search_and_fit`, in a Ray task."""
    from classifiers.search import single_threaded_blas

    with single_threaded_blas():
        return fold(X=X, y=y, train=train, test=test)


@dataclass
class RayFoldRunner:
    """:data:`classifiers.search.FoldRunner` on the cluster: one task per fold.

    ``X`` and ``y`` go to the object store once (``ray.put``); every task reads them
    from there (zero-copy on the node that holds them), not from its own pickled copy.
    """

    cpus_per_task: float = 1.0

    def __call__(self, fold: Callable, X: np.ndarray, y: np.ndarray,
                 splits: Sequence[tuple[np.ndarray, np.ndarray]], n_jobs: int | None = None
                 ) -> Iterator:
        X_ref, y_ref = ray.put(X), ray.put(y)
        task = ray.remote(num_cpus=self.cpus_per_task, max_retries=3)(run_fold)
        refs = [task.remote(fold, X_ref, y_ref, train, test) for train, test in splits]
        try:
            for ref in refs:  # in split order, as the local runner
                yield ray.get(ref)
        finally:  # stopped early (an error, Ctrl-C): the other folds are not left running
            for ref in refs:
                with contextlib.suppress(Exception):
                    ray.cancel(ref)


def check_reachable(address: str | None, timeout: float = 5.0) -> None:
    """Fail at once when nothing listens at a ``HOST:PORT`` address.

    Ray itself retries an unreachable head for minutes, printing warnings; a plain
    TCP connection tells within seconds. Other forms (``auto``, ``ray://...``) are
    left to Ray.
    """
    if not address or address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UserInputError(f"--address {address!r} is not HOST:PORT (the head's address, "
                             "as 'ray start --head' prints it)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise UserInputError(
            f"cannot reach a Ray cluster at {address} ({exc.strerror or exc}); start one "
            "with 'ray start --head', or fix --address / RAY_ADDRESS") from None


@contextmanager
def connect(address: str | None) -> Iterator[RayEngine]:
    """Connect to the cluster at ``address``, or start a local Ray when None.

    A Ray this function started (or connected) is shut down on exit; one the caller
    had already initialised is left as it was.
    """
    started = False
    if not ray.is_initialized():
        check_reachable(address)
        options = {"log_to_driver": False, "logging_level": logging.ERROR}
        if address is None:
            options["include_dashboard"] = False
        try:
            ray.init(address=address, **options)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserInputError(
                f"cannot reach a Ray cluster at {address or 'a local Ray'} ({first}); start "
                "one with 'ray start --head', or fix --address / RAY_ADDRESS") from None
        started = True
    try:
        yield RayEngine.from_cluster()
    finally:
        if started:
            ray.shutdown()

