"""``tlearn predict``: image files classified by a saved model."""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path

from features.batches import Workers
from features.errors import UserInputError
from features.extraction import DeviceCallback, ProgressCallback
from features.integrity import atomic_write, check_output_path
from features.runtimes import runtime_device
from pipeline.config import DEFAULT_BATCH_SIZE
from pipeline.datasets import images_to_predict
from pipeline.engines import open_engine
from pipeline.image_classifiers import load_image_classifier


def predict_files(model_path: str | Path, images: list[str | Path], *, top: int = 1,
                  batch_size: int = DEFAULT_BATCH_SIZE, workers: Workers = "auto",
                  runtime: str | None = None, engine: str = "local",
                  address: str | None = None, coverage: float | None = None,
                  on_device: DeviceCallback | None = None) -> list[dict]:
    """Classify images with a saved model; unreadable files get an ``error`` entry.

    ``images`` is a folder, a CSV of paths, or image files (see
    :func:`pipeline.datasets.images_to_predict`). Files are streamed through the
    model a batch at a time; the results come back in input order. ``runtime`` runs
    the network (see :func:`pipeline.image_classifiers.load_image_classifier`);
    ``engine`` and ``address`` where the images are scored (as :func:`write_predictions`);
    ``coverage`` another share of known images to accept than the model's threshold's
    (:func:`pipeline.image_classifiers.load_image_classifier`); ``on_device(line)`` hears
    what computes once the model is loaded.
    """
    _check_predict_args(top, batch_size)
    paths, _ = images_to_predict(list(images))
    model = load_image_classifier(model_path, runtime=runtime, coverage=coverage)
    _announce(model, runtime, on_device)
    with open_engine(engine, address) as chosen:
        return list(model.iter_predictions(
            paths, top=top, batch_size=batch_size, workers=workers,
            score_batches=chosen.score_batches(model_path, model.info.get("runtime"))))


def _announce(model, runtime: str | None, on_device: DeviceCallback | None) -> None:
    if on_device is not None:
        on_device(runtime_device(model.info.get("runtime") or runtime).describe())


@dataclass
class PredictionReport:
    """Outcome of :func:`write_predictions`."""

    out: Path
    rows: int
    errors: list[tuple[str, str]]
    ignored: list[tuple[str, str]]
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


PREDICTION_COLUMNS = ("path", "label", "score", "score_kind", "top", "unknown",
                      "unknown_score", "error")


def unknown_cells(result: dict) -> list[str]:
    """The ``unknown`` and ``unknown_score`` cells of a classified image: ``true``/``false``
    and the score, or empty for a model without the score (saved before it existed)."""
    if "unknown" not in result:
        return ["", ""]
    return ["true" if result["unknown"] else "false", f"{result['unknown_score']:.6g}"]


def top_cell(top: list[tuple[str, float]]) -> str:
    """The ``top`` column of ``predict --out``: a JSON list of ``[label, score]`` pairs.

    JSON, not ``label:score;...``: labels are folder names, which may hold ``;``, ``:``
    or ``,``, and ``json.loads`` reads any of them back exactly.
    """
    return json.dumps([[label, float(f"{score:.6g}")] for label, score in top],
                      ensure_ascii=False)


def write_predictions(model_path: str | Path, images: list[str | Path], out: str | Path, *,
                      top: int = 1, batch_size: int = DEFAULT_BATCH_SIZE,
                      workers: Workers = "auto", overwrite: bool = False,
                      progress: ProgressCallback | None = None,
                      runtime: str | None = None, engine: str = "local",
                      address: str | None = None, coverage: float | None = None,
                      on_device: DeviceCallback | None = None) -> PredictionReport:
    """Classify a folder, a CSV of paths or files, writing one CSV row per image as it goes.

    Rows (``path, label, score, score_kind, top, unknown, unknown_score, error``;
    ``score_kind`` is ``probability`` or ``margin``; ``top`` as in :func:`top_cell`;
    ``unknown`` ``true`` for an image of no trained class, as :func:`unknown_cells`)
    are written in input order to ``<out>.partial``, which is renamed to ``out`` only
    when every image is done: a file at ``out`` is always complete.
    Memory stays bounded by a few batches, whatever the number of images. ``runtime``
    runs the network, as in :func:`predict_files`. With ``engine="ray"`` the images are
    decoded and scored on the cluster at ``address`` (each worker loads the model once;
    it and the images must be at the same paths there), and this process writes the CSV.
    ``coverage`` and ``on_device`` as in :func:`predict_files`.

    Raises
    ------
    UserInputError
        Bad arguments, no images, an ``out`` that exists (without ``overwrite``), or a
        model that cannot be loaded.
    """
    _check_predict_args(top, batch_size)
    out = Path(out)
    check_output_path(out)
    if out.exists() and not overwrite:
        raise UserInputError(f"{out} already exists; pass --overwrite to replace it, or "
                             "another --out")
    if out.suffix.lower() != ".csv":
        raise UserInputError(f"--out {out} must name a .csv file")
    paths, ignored = images_to_predict(list(images))
    model = load_image_classifier(model_path, runtime=runtime, coverage=coverage)
    _announce(model, runtime, on_device)
    errors: list[tuple[str, str]] = []
    t0 = time.perf_counter()
    score_batches = None

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(PREDICTION_COLUMNS)
            results = model.iter_predictions(paths, top=top, batch_size=batch_size,
                                             workers=workers, score_batches=score_batches)
            for n, r in enumerate(results, start=1):
                if "error" in r:
                    errors.append((r["path"], r["error"]))
                    writer.writerow([r["path"], "", "", "", "", "", "", r["error"]])
                else:
                    writer.writerow([r["path"], r["label"], f"{r['score']:.6g}",
                                     r["score_kind"], top_cell(r["top"]), *unknown_cells(r),
                                     ""])
                if progress and (n % batch_size == 0 or n == len(paths)):
                    f.flush()
                    progress(n, len(paths))

    with open_engine(engine, address) as chosen:
        score_batches = chosen.score_batches(model_path, model.info.get("runtime"))
        atomic_write(out, write, partial=True)
    return PredictionReport(out, len(paths), errors, ignored, time.perf_counter() - t0)


def _check_predict_args(top: int, batch_size: int) -> None:
    if top < 1:
        raise UserInputError(f"--top must be at least 1, got {top}")
    if batch_size < 1:
        raise UserInputError(f"--batch-size must be at least 1, got {batch_size}")
