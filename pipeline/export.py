"""Export a trained model as one deployable network: uint8 pixels in, class scores out.

``tlearn export MODEL --format openvino|onnx --out DIR`` writes, in one folder,
a network that holds everything between decoded pixels and scores: the
backbone's preprocessing, the backbone, and for a stage 2 classifier its
linear head with the classifier's own scores (softmax, Platt-scaled margins or
normalised one-vs-rest sigmoids where it gives probabilities, decision values
where it gives none). It runs with only the
OpenVINO or ONNX Runtime package: beside it lie ``classes.txt``, a README that
says how images must be decoded, ``predict.py``, a standalone example, and
``tlearn_images.py``, tlearn's own image reader (:mod:`features.images`, copied as it
is), which ``predict.py`` decodes with: one decoder, not a second copy that can drift.

The head is read off the classifier as the affine map it is (its decision
function on the origin and on each unit vector), and the step from margins to
scores is found by trying each candidate on probe features, so any linear family
exports the same way; before anything is written the whole network is checked
against tlearn's own scores on random images.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import shutil
import uuid
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import expit, softmax

from features import images
from features.backbones import get_backbone
from features.devices import requires_tensorflow
from features.errors import UserInputError
from features.factory import create_extractor
from features.integrity import atomic_write_json, atomic_write_text, file_digest
from features.spec import FeatureSpec
from pipeline.image_classifiers import load_image_classifier, load_model_file
from pipeline.stage3 import KerasImageClassifier

EXPORT_FORMATS = ("openvino", "onnx")
INPUT_NAME = "pixels"
OUTPUT_NAME = "scores"
_MODEL_FILES = {"openvino": ("model.xml", "model.bin"), "onnx": ("model.onnx",)}
# features/images.py under the name predict.py imports it by.
DECODER_FILE = "tlearn_images.py"
# |exported - tlearn| on probabilities (or decision values scaled by their largest
# magnitude) above which the export is refused as wrong rather than written.
_CHECK_TOLERANCE = 1e-3


@dataclass
class ExportResult:
    """What :func:`export_model` wrote."""

    out: Path
    format: str
    files: list[str]
    input_size: int
    label_names: list[str]
    scores: str


def _check_format(fmt: str) -> None:
    if fmt not in EXPORT_FORMATS:
        raise UserInputError(f"unknown export format {fmt!r}; choose one of: "
                             f"{', '.join(EXPORT_FORMATS)}")
    needed = {"openvino": ("openvino",), "onnx": ("onnx", "tf2onnx", "onnxruntime")}[fmt]
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise UserInputError(f"--format {fmt} needs {', '.join(missing)}, not installed; "
                             f"install it with pip install 'tlearn[{fmt}]'")


# -- the network --------------------------------------------------------------------------------

def _preprocessing_ops(mode: str):
    """The graph version of a preprocessing mode (``features.backbones.Preprocessing.mode``)."""
    import keras

    ops = keras.ops
    if mode == "caffe":
        means = np.array([103.939, 116.779, 123.68], dtype=np.float32)
        return lambda x: ops.flip(x, axis=-1) - means
    if mode == "tf":
        return lambda x: x / 127.5 - 1.0
    if mode == "lite":
        return lambda x: (x - 127.0) / 128.0
    if mode == "scale_to_unit":
        return lambda x: x / 255.0
    if mode == "none":  # ConvNeXt, EfficientNetV2, DINOv2 normalise inside the network
        return lambda x: x
    raise UserInputError(f"preprocessing {mode!r} cannot be exported")


def linear_head(model: Any, feature_dim: int, chunk: int = 1024
                ) -> tuple[np.ndarray, np.ndarray]:
    """``(W, b)`` with ``decision_function(X) == X @ W.T + b`` for a linear classifier.

    Read off the classifier itself (origin, then unit vectors a chunk at a time),
    so scalers and row-space liftings inside it are folded in.
    """
    b = np.atleast_1d(np.asarray(model.decision_function(
        np.zeros((1, feature_dim), np.float32)), np.float64)[0])
    rows = []
    for start in range(0, feature_dim, chunk):
        n = min(chunk, feature_dim - start)
        eye = np.zeros((n, feature_dim), np.float32)
        eye[np.arange(n), start + np.arange(n)] = 1.0
        d = np.asarray(model.decision_function(eye), np.float64).reshape(n, -1)
        rows.append(d - b)
    return np.concatenate(rows).T, b


def _score_function(model: Any, W: np.ndarray, b: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, str]:
    """How ``model.class_scores`` follows from the margins: ``(W2, b2, activation)``.

    ``class_scores(X) == activation(X @ W2.T + b2)`` with ``activation`` one of
    ``softmax`` (multinomial logistic regression, Platt-scaled margins; the scale is
    folded into ``W2``), ``normalized_sigmoid`` (one-vs-rest logistic models saved
    before their Platt scaling) or ``linear`` (plain decision values). Found by trying
    each on probe features, so the head follows whatever the classifier family
    computes; nothing is guessed.
    """
    # Probes around a point where every margin is zero, spread so margins are of order
    # one: there no activation saturates, and the candidates differ.
    rng = np.random.default_rng(0)
    centre = np.linalg.lstsq(W, -b, rcond=None)[0]
    noise = rng.normal(size=(64, W.shape[1]))
    spread = float(np.std(noise @ W.T)) or 1.0
    X = (centre + noise / spread).astype(np.float32)
    scores = np.asarray(model.class_scores(X), np.float64)
    binary = W.shape[0] == 1
    columns_w = np.concatenate([np.zeros_like(W), W]) if binary else W
    columns_b = np.concatenate([np.zeros_like(b), b]) if binary else b
    # The model's own margins, not the map's: the activation is identified apart from
    # the rounding of an ill-conditioned map (a scaler over near-constant features).
    d = np.asarray(model.decision_function(X), np.float64)
    D = np.column_stack([np.zeros_like(d), d]) if d.ndim == 1 else d
    candidates = []
    if not np.allclose(scores.sum(axis=1), 1.0, atol=1e-4):
        sign_w = np.concatenate([-W, W]) if binary else W
        sign_b = np.concatenate([-b, b]) if binary else b
        candidates.append((sign_w, sign_b, "linear", np.column_stack([-d, d]) if binary else d))
    else:
        rel = D - D[:, :1]
        logp = np.log(np.clip(scores, 1e-300, None))
        logp = logp - logp[:, :1]
        usable = (scores > 1e-6) & (scores[:, :1] > 1e-6) & (np.abs(rel) > 1e-9)
        scale = float(np.sum(logp[usable] * rel[usable]) / np.sum(rel[usable] ** 2)) \
            if usable.any() else 1.0
        candidates.append((scale * columns_w, scale * columns_b, "softmax",
                           softmax(scale * D, axis=1)))
        if not binary:
            sig = expit(D)
            candidates.append((columns_w, columns_b, "normalized_sigmoid",
                               sig / sig.sum(axis=1, keepdims=True)))
    for W2, b2, activation, predicted in candidates:
        if np.max(np.abs(predicted - scores)) < 1e-4 * max(1.0, float(np.max(np.abs(scores)))):
            return W2, b2, activation
    raise UserInputError(
        f"the scores of this {getattr(model, 'kind', 'classifier')} model are not a "
        "softmax, normalised sigmoids or the margins of its linear map, so it cannot be "
        "exported")


def _head_layers(model: Any, feature_dim: int):
    """A function adding the classifier's head to a feature tensor, and the score kind."""
    import keras

    W, b = linear_head(model, feature_dim)
    W, b, activation = _score_function(model, W, b)
    dense = keras.layers.Dense(W.shape[0], name="head")

    def apply(features):
        z = dense(features)
        dense.set_weights([W.T.astype(np.float32), b.astype(np.float32)])
        if activation == "softmax":
            return keras.ops.softmax(z, axis=-1)
        if activation == "normalized_sigmoid":
            s = keras.ops.sigmoid(z)
            return s / keras.ops.sum(s, axis=-1, keepdims=True)
        return z

    return apply, "decision" if activation == "linear" else "probability"


def build_export_network(model_path: str | os.PathLike):
    """The Keras network uint8 pixels -> scores of a saved model, and what describes it.

    Returns
    -------
    (keras.Model, dict)
        The dict has ``input_size``, ``label_names``, ``scores`` and ``source``.

    Raises
    ------
    UserInputError
        A model whose features are not float32 (the exported network computes float32).
    """
    import keras

    loaded = load_model_file(model_path)
    unknown = loaded.__dict__.get("unknown_")
    if isinstance(loaded, KerasImageClassifier):
        size = int(loaded.info["input_size"])
        mode = loaded.info["preprocessing"]
        if mode != "scale_to_unit":
            mode = get_backbone(loaded.info["backbone"]).preprocess.mode
        # with the score: probabilities and the penultimate features (with_features)
        network, scores = loaded.network, "probability"
        names = list(loaded.label_names_)
        temperature = float(loaded.info.get("temperature", 1.0))
        head = _split_head(len(names), None if temperature == 1.0
                           else _temperature_layer(temperature))
    else:
        if not loaded.feature_spec_:
            loaded.feature_extractor()  # raises the error that says how to fit it with a spec
        spec = FeatureSpec.from_dict(FeatureSpec.fill_defaults(loaded.feature_spec_))
        if spec.precision != "float32":
            raise UserInputError(
                f"{Path(model_path).name} was trained on {spec.precision} features and the "
                "exported network computes float32; export a model trained on float32 features")
        extractor = create_extractor(replace(spec, runtime="tensorflow", calibration=""),
                                     runtime="tensorflow")
        size, mode = spec.input_size, get_backbone(spec.backbone).preprocess.mode
        network = extractor.model
        head, scores = _head_layers(loaded, spec.feature_dim)
        names = [loaded.label_names_[i] for i in range(len(loaded.classes_))]
        head = _feature_head(head)
    pixels = keras.Input((size, size, 3), dtype="uint8", name=INPUT_NAME)
    x = _preprocessing_ops(mode)(keras.ops.cast(pixels, "float32"))
    x = network(x, training=False)
    scores_out, features = head(x)
    if unknown is not None:  # the unknown score, one column more, last
        scores_out = keras.ops.concatenate(
            [scores_out, _unknown_score_ops(unknown.distance)(features)], axis=-1)
    composed = keras.Model(pixels, scores_out, name="tlearn_export")
    return composed, {"input_size": size, "label_names": names, "scores": scores,
                      "source": Path(model_path).name,
                      "unknown": None if unknown is None else {
                          "score": unknown.name, "threshold": unknown.threshold,
                          "coverage": unknown.coverage, "column": len(names)}}


def _feature_head(head):
    """A stage 2 head as :func:`_split_head` gives: (scores, the features they come from)."""
    return lambda features: (head(features), features)


def _split_head(classes: int, temperature):
    """A stage 3 network's output as (scores, features): its first ``classes`` columns are
    the probabilities (rescaled at the temperature where there is one), any after them the
    features its last layer classifies (:func:`pipeline.stage3.models.with_features`)."""
    def split(x):
        probabilities = x[:, :classes]
        if temperature is not None:
            probabilities = temperature(probabilities)
        return probabilities, x[:, classes:]
    return split


def _unknown_score_ops(distance):
    """:meth:`classifiers.novelty.FeatureDistance.score` as graph operations, step by
    step the same (float32)."""
    import keras

    ops = keras.ops
    terms = distance.score_terms()
    axes = np.asarray(distance.axes, np.float32)
    variances = np.asarray(distance.axis_variances, np.float32)
    residual_variance = np.float32(distance.residual_variance)
    dim = np.float32(axes.shape[1])

    def score(x):
        if distance.unit_rows:
            norms = ops.sqrt(ops.sum(x * x, axis=-1, keepdims=True))
            x = x / ops.maximum(norms, np.finfo(np.float32).tiny)
        centred = x - terms["centre"]
        projected = ops.matmul(centred, axes.T)
        outside = centred - ops.matmul(projected, axes)
        distances = []
        for inside_c, outside_c in zip(terms["means_inside"], terms["means_outside"],
                                       strict=True):
            z, r = projected - inside_c, outside - outside_c
            distances.append(ops.sum(z * z / variances, axis=-1, keepdims=True)
                             + ops.sum(r * r, axis=-1, keepdims=True) / residual_variance)
        return ops.min(ops.concatenate(distances, axis=-1), axis=-1, keepdims=True) / dim

    return score


def _temperature_layer(temperature: float):
    """Softmax probabilities rescaled at ``temperature`` (the stage 3 calibration)."""
    import keras

    def rescale(p):
        logp = keras.ops.log(keras.ops.maximum(p, 1e-30)) / temperature
        return keras.ops.softmax(logp, axis=-1)

    return keras.layers.Lambda(rescale, name="temperature")


def _check_against_tlearn(composed, model_path, size: int, scores_kind: str) -> None:
    images = np.random.default_rng(0).integers(0, 256, (4, size, size, 3), dtype=np.uint8)
    model = load_image_classifier(model_path, runtime="tensorflow")
    expected = model.scores(images)
    got = np.asarray(composed.predict_on_batch(images))
    if got.shape != expected.shape:
        error = np.inf
    else:
        n = len(model.label_names)
        scale = 1.0 if scores_kind == "probability" else max(1.0, float(np.max(np.abs(
            expected[:, :n]))))
        error = float(np.max(np.abs(got[:, :n] - expected[:, :n]))) / scale
        if expected.shape[1] > n:  # the unknown score, relative to its size
            unknown_scale = max(1.0, float(np.max(np.abs(expected[:, n:]))))
            error = max(error, float(np.max(np.abs(got[:, n:] - expected[:, n:])))
                        / unknown_scale)
    if error > _CHECK_TOLERANCE:
        raise RuntimeError(f"the exported network differs from tlearn's scores by {error:.3g}; "
                           "nothing was written (please report this)")


# -- files --------------------------------------------------------------------------------------

def _save_openvino(composed, folder: Path, size: int) -> None:
    import openvino as ov
    import tensorflow as tf

    spec = tf.TensorSpec([None, size, size, 3], tf.uint8, name=INPUT_NAME)
    function = tf.function(lambda x: composed(x, training=False)).get_concrete_function(spec)
    converted = ov.convert_model(function)
    converted.inputs[0].get_tensor().set_names({INPUT_NAME})
    converted.outputs[0].get_tensor().set_names({OUTPUT_NAME})
    # compress_to_fp16=False: the default would round the weights to float16.
    ov.save_model(converted, str(folder / "model.xml"), compress_to_fp16=False)


def _save_onnx(composed, folder: Path, size: int) -> None:
    import onnx

    composed.predict_on_batch(np.zeros((1, size, size, 3), np.uint8))  # Keras exports called models
    path = folder / "model.onnx"
    # Keras 3 exports through tf2onnx (with its own numpy 2 patches): the supported way.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the patch's probe of np.object
        composed.export(str(path), format="onnx", verbose=False)
    graph = onnx.load(str(path))
    extra = [i.name for i in graph.graph.input if i.name != INPUT_NAME]
    if extra:
        # tf2onnx leaves some Keras constants as graph inputs (the Normalization mean
        # and variance of ConvNeXt and EfficientNetV2): such a file cannot run on pixels.
        raise UserInputError(
            f"ONNX export leaves {len(extra)} constant(s) of this network as inputs "
            f"({extra[0].rsplit('/', 2)[-2]}...: tf2onnx does not freeze them); export it "
            "with --format openvino")
    old = graph.graph.output[0].name
    for node in graph.graph.node:
        node.output[:] = [OUTPUT_NAME if o == old else o for o in node.output]
        node.input[:] = [OUTPUT_NAME if i == old else i for i in node.input]
    graph.graph.output[0].name = OUTPUT_NAME
    onnx.checker.check_model(graph)
    onnx.save(graph, str(path))


_README = """# {source}, exported by tlearn ({fmt})

One network from decoded pixels to class scores: preprocessing, backbone{head}.
It needs only {runtime} and numpy (and Pillow to decode images), not tlearn.

| | |
|---|---|
| file | {files} |
| input `{input}` | uint8, shape (N, {size}, {size}, 3): RGB pixels, batch first, any N |
| output `{output}` | float32, shape (N, {columns}): {scores_text}{unknown_column} |
| classes | `classes.txt`, one name a line, in the order of the output columns |
{unknown_text}
Decode images as tlearn does: `{decoder}` is tlearn's own image reader, copied
as it is; `load_image(path, {size})` (or `decode_image(data, {size})` for bytes) gives
the network's input. It applies the EXIF orientation, converts any mode to 8-bit RGB
(16- and 32-bit grayscale rescaled, not clipped; transparent pixels on white), and
resizes the whole image (aspect ratio ignored) to {size} x {size} with bilinear
resampling (for JPEG, after `Image.draft("RGB", ({size}, {size}))`). No other
scaling: the network does its own preprocessing.

`python predict.py IMAGE...` prints the scores of each image as JSON (see the code),
with `unknown` and `unknown_score` where the model has the score; an image that cannot be
decoded gets an `error` instead, as in `tlearn predict`.
`tlearn-export.json` records the source model, the unknown threshold and the SHA-256 of
every file.
"""

_UNKNOWN_README = (
    "| unknown | column {column} (from 0), after the classes: how unlike the model's "
    "training images an image is; above {threshold:.6g} (`unknown.threshold` in "
    "`tlearn-export.json`, fitted to accept {coverage:.0%} of images of the trained "
    "classes) an image is of no trained class, as `tlearn predict` says `unknown: true` |\n")

_PREDICT = '''"""Classify images with the exported network: python predict.py IMAGE... (JSON)."""

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from {decoder_module} import ImageDecodeError, load_image  # noqa: E402  tlearn's own reader

SIZE = {size}
CLASSES = (HERE / "classes.txt").read_text(encoding="utf-8").splitlines()
# the "unknown" threshold (None for a model without the score): the output's column
# after the classes is the score, above the threshold an image is of no trained class
UNKNOWN = json.loads((HERE / "tlearn-export.json").read_text(encoding="utf-8")).get("unknown")


def load(path):
    """RGB uint8 (SIZE, SIZE, 3), decoded by tlearn's own code."""
    return load_image(path, SIZE)


{runner}


def main(paths):
    results, decoded = [], []
    for p in paths:
        try:
            decoded.append(load(p))
            results.append({{"path": str(p)}})
        except ImageDecodeError as exc:
            results.append({{"path": str(p), "error": exc.reason}})
    scores = iter(run(np.stack(decoded)) if decoded else [])
    for r in results:
        if "error" not in r:
            s = next(scores)
            n = len(CLASSES)
            r.update(label=CLASSES[int(np.argmax(s[:n]))], scores=[float(v) for v in s[:n]])
            if UNKNOWN is not None:
                r.update(unknown=bool(s[n] > UNKNOWN["threshold"]), unknown_score=float(s[n]))
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1:])
'''

_RUNNERS = {
    "openvino": '''def run(pixels):
    import openvino as ov

    compiled = ov.Core().compile_model(str(HERE / "model.xml"), "CPU",
                                       {"INFERENCE_PRECISION_HINT": "f32"})
    return compiled(pixels)[0]''',
    "onnx": '''def run(pixels):
    import onnxruntime as ort

    session = ort.InferenceSession(str(HERE / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {"pixels": pixels})[0]''',
}


def export_model(model_path: str | os.PathLike, out: str | os.PathLike, *,
                 format: str = "openvino", overwrite: bool = False) -> ExportResult:
    """Write ``model_path`` as one network in ``format`` to the folder ``out``.

    The folder is built under a temporary name beside ``out`` and renamed into
    place when complete: ``out`` is never half-written.

    Parameters
    ----------
    model_path : path-like
        A ``.joblib`` classifier or a stage 3 ``.keras`` model (with its sidecar).
    out : path-like
        Folder to create.
    format : {"openvino", "onnx"}, default="openvino"
    overwrite : bool, default=False
        Replace an existing ``out``.

    Raises
    ------
    UserInputError
        Unknown format or missing package, ``out`` exists, or a model that cannot be
        exported (int8 or bfloat16 features).
    """
    _check_format(format)
    requires_tensorflow(f"tlearn export ({format} is converted from a TensorFlow graph)")
    out = Path(out)
    if out.exists() and not overwrite:
        raise UserInputError(f"{out} already exists; pass --overwrite to replace it, or "
                             "another --out")
    composed, about = build_export_network(model_path)
    size, names, unknown = about["input_size"], about["label_names"], about["unknown"]
    _check_against_tlearn(composed, model_path, size, about["scores"])
    out.parent.mkdir(parents=True, exist_ok=True)
    # A plain mkdir, not mkdtemp: the folder gets the umask's mode like any folder the
    # user makes (mkdtemp's is owner-only, 0700), and it survives the rename into place.
    tmp = out.parent / f".{out.name}.export-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        (_save_openvino if format == "openvino" else _save_onnx)(composed, tmp, size)
        atomic_write_text(tmp / "classes.txt", "".join(f"{n}\n" for n in names))
        scores_text = ("class probabilities (rows sum to 1)" if about["scores"] == "probability"
                       else "decision values (highest wins)")
        files = list(_MODEL_FILES[format])
        atomic_write_text(tmp / "README.md", _README.format(
            source=about["source"], fmt=format,
            head=", linear head" if Path(model_path).suffix == ".joblib" else " and its head",
            runtime="OpenVINO" if format == "openvino" else "ONNX Runtime",
            files=", ".join(f"`{f}`" for f in files), input=INPUT_NAME, size=size,
            output=OUTPUT_NAME, columns=len(names) + (unknown is not None),
            scores_text=scores_text, decoder=DECODER_FILE,
            unknown_column="" if unknown is None else ", then the unknown score",
            unknown_text="" if unknown is None else _UNKNOWN_README.format(
                column=len(names), threshold=unknown["threshold"],
                coverage=unknown["coverage"])))
        atomic_write_text(tmp / DECODER_FILE, inspect.getsource(images))
        atomic_write_text(tmp / "predict.py", _PREDICT.format(
            size=size, runner=_RUNNERS[format], decoder_module=Path(DECODER_FILE).stem))
        atomic_write_json(tmp / "tlearn-export.json", {
            "source": about["source"], "format": format, "input": INPUT_NAME,
            "input_shape": [None, size, size, 3], "input_dtype": "uint8",
            "output": OUTPUT_NAME, "scores": about["scores"], "classes": names,
            "unknown": unknown,
            "files": {f: file_digest(tmp / f) for f in [*files, "classes.txt",
                                                          DECODER_FILE]}})
        if out.exists():
            doomed = out.with_name(f".{out.name}.replaced-{os.getpid()}")
            os.rename(out, doomed)
            os.rename(tmp, out)
            shutil.rmtree(doomed, ignore_errors=True)
        else:
            os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ExportResult(out, format, sorted(p.name for p in out.iterdir()), size, names,
                        about["scores"])


def read_export_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """``tlearn-export.json`` of an exported folder."""
    return json.loads((Path(folder) / "tlearn-export.json").read_text())
