"""Where the work of a command runs: here (the local engine) or on a Ray cluster.

``--engine local`` (the default) runs everything in this process and imports nothing
from Ray. ``--engine ray`` computes features, class scores and cross-validation folds
on a Ray cluster (:mod:`pipeline.ray_engine`) while this process, the driver, still
plans the work and writes every file, so the outputs are the local ones.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from features.errors import UserInputError
from features.extraction import FeatureBatches
from features.prediction import ScoreBatches
from features.registries import Registry

#: The engines by name, with what each is (``tlearn --help`` lists them from here).
ENGINES: Registry[str] = Registry("engine")
ENGINES.register("local", "everything in this process")
ENGINES.register("ray", "features, class scores and C-search folds on a Ray cluster")
RAY_MISSING = "Ray is not installed; pip install 'tlearn[ray]'"


@dataclass
class Engine:
    """What a workflow hands to the library calls: ``None`` everywhere means here.

    Attributes
    ----------
    name : str
        ``"local"`` or ``"ray"``.
    feature_batches : callable or None
        For :func:`features.extraction.extract_features`.
    fold_runner : callable or None
        For :meth:`classifiers.estimators.FeatureClassifier.fit_store`.
    address : str or None
        The Ray cluster's address (None: a local Ray started for the run).
    """

    name: str = "local"
    feature_batches: FeatureBatches | None = None
    fold_runner: object | None = None
    address: str | None = None
    _ray: object | None = None

    def score_batches(self, model_path: str | os.PathLike, runtime: str | None
                      ) -> ScoreBatches | None:
        """For :func:`features.prediction.iter_image_predictions`: the saved model at
        ``model_path``, loaded once per Ray worker, scores the images there."""
        if self._ray is None:
            return None
        return self._ray.score_batches(Path(model_path), runtime)


def resolve_address(address: str | None) -> str | None:
    """The cluster to use: ``address``, else ``$RAY_ADDRESS``, else None (start a local Ray)."""
    return address or os.environ.get("RAY_ADDRESS") or None


@contextmanager
def open_engine(engine: str = "local", address: str | None = None) -> Iterator[Engine]:
    """The engine of one command: for ``ray``, connected when its first work starts
    (:class:`_LazyCluster`) and shut down when the command ends.

    Parameters
    ----------
    engine : {"local", "ray"}
    address : str, optional
        For ``ray``: the cluster's address (``HOST:PORT`` of its head, or ``auto``);
        default ``$RAY_ADDRESS``, else a local Ray started for the run and stopped after.

    Raises
    ------
    UserInputError
        An unknown engine, ``address`` without ``ray``, Ray not installed, or a
        ``HOST:PORT`` nothing listens at (at once); a cluster Ray itself cannot join
        (later, when the first work is handed to it).
    """
    ENGINES[engine]  # an unknown name raises, naming the engines
    if engine == "local":
        if address:
            raise UserInputError("--address needs --engine ray")
        yield Engine()
        return
    try:
        import ray
    except ImportError:
        raise UserInputError(RAY_MISSING) from None
    from pipeline.ray_engine import check_reachable

    resolved = resolve_address(address)
    if not ray.is_initialized():
        check_reachable(resolved)  # a HOST:PORT nothing listens at is refused at once
    with ExitStack() as stack:
        cluster = _LazyCluster(resolved, stack)
        stack.callback(cluster.close)
        yield Engine("ray", cluster.feature_batches, cluster.fold_runner, resolved, cluster)


class _LazyCluster:
    """The Ray cluster, connected when the first work is handed to it (and left on exit).

    A command's own checks (settings, a store already up to date, an existing file it
    may not replace) run before its work starts, so they answer at once instead of
    after Ray has started or connected.
    """

    def __init__(self, address: str | None, stack: ExitStack) -> None:
        self._address, self._stack, self._engine, self._closed = address, stack, None, False

    def close(self) -> None:
        self._closed = True

    def _connected(self):
        if self._closed:  # a Ray started now would never be shut down
            raise RuntimeError("the Ray engine was used after its command ended")
        if self._engine is None:
            from pipeline.ray_engine import connect

            self._engine = self._stack.enter_context(connect(self._address))
        return self._engine

    def feature_batches(self, *args, **kwargs):
        return self._connected().feature_batches(*args, **kwargs)

    def fold_runner(self, *args, **kwargs):
        return self._connected().fold_runner(*args, **kwargs)

    def score_batches(self, model_path: Path, runtime: str | None) -> ScoreBatches:
        def run(*args, **kwargs):
            return self._connected().score_batches(model_path, runtime)(*args, **kwargs)
        return run
