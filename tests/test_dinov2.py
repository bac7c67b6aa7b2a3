"""DINOv2 backbones (keras-hub): architecture, features, sizes, refusals; weights=None."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from features.backbones import get_backbone
from features.dinov2 import PATCH_SIZE, VARIANTS
from features.errors import UserInputError, WeightsUnavailableError
from features.factory import create_extractor
from features.networks import build_base_model

keras_hub = pytest.importorskip("keras_hub")

NAMES = [pytest.param("dinov2_small"), pytest.param("dinov2_base", marks=pytest.mark.slow)]


def _pixels(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("name", NAMES)
def test_architecture_has_the_parameters_of_keras_hubs_preset(name):
    # keras-hub's presets table records each preset's parameter count; at the preset's
    # 518 pixels both position embeddings have 37 x 37 + 1 rows, as in the preset.
    from keras_hub.src.models.dinov2.dinov2_presets import backbone_presets

    variant = VARIANTS[name]
    backbone = keras_hub.models.DINOV2Backbone(
        **variant.backbone_arguments(variant.position_embedding_size))
    assert backbone.count_params() == backbone_presets[name]["metadata"]["params"]


@pytest.mark.parametrize("name", NAMES)
def test_built_at_the_minimum_size_gives_the_documented_feature_sizes(name):
    config = get_backbone(name)
    width = VARIANTS[name].hidden_dim
    sizes = {}
    for pooling in config.poolings:
        ext = create_extractor(name, weights="none", input_size=config.min_input_size,
                               pooling=pooling, runtime="tensorflow")
        sizes[pooling] = ext(_pixels(2, config.min_input_size)).shape[1]
        assert ext.spec.feature_dim == config.feature_size(pooling)
    assert sizes == {"cls_avg": 2 * width, "avg": width, "max": width}
    assert config.min_input_size == PATCH_SIZE


def test_features_equal_keras_hubs_backbone_and_normalisation_on_the_same_weights():
    from keras.applications import imagenet_utils

    size = 2 * PATCH_SIZE
    ext = create_extractor("dinov2_small", weights="none", input_size=size,
                           runtime="tensorflow")
    assert ext.spec.pooling == "cls_avg" and ext.spec.layer == "dinov2"
    reference = keras_hub.models.DINOV2Backbone(
        **VARIANTS["dinov2_small"].backbone_arguments(size))
    reference.set_weights(ext.model.get_layer("dinov2").get_weights())
    pixels = _pixels(3, size)
    # DINOv2's ImageNet normalisation, as Keras' "torch" mode writes it.
    normalised = imagenet_utils.preprocess_input(pixels.astype("float32"), mode="torch")
    tokens = np.asarray(reference.predict({"images": normalised}, verbose=0))
    expected = np.concatenate([tokens[:, 0], tokens[:, 1:].mean(axis=1)], axis=-1)
    np.testing.assert_allclose(ext(pixels), expected, rtol=1e-4, atol=1e-4)


def test_the_converter_normalises_known_pixels_as_imagenet_mean_and_deviation():
    ext = create_extractor("dinov2_small", weights="none", input_size=PATCH_SIZE,
                           runtime="tensorflow")
    converter = ext.model.get_layer("image_converter")
    pixels = np.zeros((1, PATCH_SIZE, PATCH_SIZE, 3), np.float32)
    pixels[..., 0], pixels[..., 1], pixels[..., 2] = 0.0, 127.5, 255.0
    out = np.asarray(converter(pixels))[0, 0, 0]
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(out, (np.array([0.0, 0.5, 1.0]) - mean) / std, atol=1e-4)
    # tlearn hands the network pixels as they are
    np.testing.assert_array_equal(ext.preprocess_input(pixels), pixels)


def test_spec_rebuilds_the_same_features_and_mirror_works():
    size = 2 * PATCH_SIZE
    ext = create_extractor("dinov2_small", weights="none", input_size=size, pooling="avg",
                           mirror=True, runtime="tensorflow")
    again = create_extractor(ext.spec, runtime="tensorflow")
    pixels = _pixels(2, size, seed=3)
    np.testing.assert_array_equal(again(pixels), ext(pixels))
    assert again.spec == ext.spec and ext.spec.views == "image+mirror"


@pytest.mark.parametrize("size,line", [
    (30, "input size 30 is not a multiple of 14, the patch side of dinov2_small; "
         "pass --input-size 28 or 42"),
    (7, "input size 7 is below the minimum of 14"),
])
def test_input_sizes_that_are_not_patch_multiples_get_one_line(size, line):
    with pytest.raises(UserInputError, match=line):
        create_extractor("dinov2_small", weights="none", input_size=size, runtime="tensorflow")


@pytest.mark.parametrize("choice", [{"taps": "stages"}, {"layer": "image_converter"},
                                    {"pooling": "flatten"}])
def test_taps_layers_and_flatten_are_refused_in_one_line(choice):
    with pytest.raises(UserInputError) as info:
        create_extractor("dinov2_small", weights="none", input_size=PATCH_SIZE,
                         runtime="tensorflow", **choice)
    assert "\n" not in str(info.value)
    assert "cls_avg" in str(info.value)


def test_cls_avg_is_refused_for_a_cnn():
    with pytest.raises(UserInputError,
                       match="unknown pooling 'cls_avg'; choose one of: flatten, avg, max"):
        create_extractor("vgg16", weights="none", input_size=32, pooling="cls_avg")


def test_finetune_is_refused_in_one_line():
    with pytest.raises(UserInputError, match="fine-tuning dinov2_small is not supported"):
        build_base_model("dinov2_small", weights="none", input_size=PATCH_SIZE)


def test_missing_keras_hub_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "keras_hub", None)  # import keras_hub -> ImportError
    with pytest.raises(UserInputError,
                       match=r"dinov2_small needs keras-hub.*pip install 'tlearn\[hub\]'"):
        create_extractor("dinov2_small", weights="none", input_size=PATCH_SIZE,
                         runtime="tensorflow")


def test_offline_imagenet_weights_name_both_ways(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Failed to resolve 'www.kaggle.com'")

    monkeypatch.setattr(keras_hub.models.DINOV2Backbone, "from_preset", offline)
    with pytest.raises(WeightsUnavailableError) as info:
        create_extractor("dinov2_small", weights="imagenet", runtime="tensorflow")
    message = str(info.value)
    assert "tlearn weights fetch dinov2_small --dest DIR" in message
    assert "--weights DIR/dinov2_small/model.weights.h5" in message and "\n" not in message


def test_a_weights_file_outside_a_preset_folder_is_refused(tmp_path):
    path = tmp_path / "dino.weights.h5"
    path.write_bytes(b"weights")
    with pytest.raises(UserInputError, match=r"not the model\.weights\.h5 of a keras-hub preset"):
        create_extractor("dinov2_small", weights=str(path), input_size=PATCH_SIZE,
                         runtime="tensorflow")


def test_a_fetched_preset_folder_loads_with_its_converter(tmp_path):
    # A preset folder as 'tlearn weights fetch' writes it (keras-hub's save_to_preset),
    # from random weights: --weights DIR/model.weights.h5 loads backbone and converter.
    size = 2 * PATCH_SIZE
    ext = create_extractor("dinov2_small", weights="none", input_size=size,
                           runtime="tensorflow")
    ext.model.get_layer("dinov2").save_to_preset(str(tmp_path))
    ext.model.get_layer("image_converter").save_to_preset(str(tmp_path))
    loaded = create_extractor("dinov2_small", weights=str(tmp_path / "model.weights.h5"),
                              input_size=size, runtime="tensorflow")
    pixels = _pixels(2, size, seed=4)
    np.testing.assert_allclose(loaded(pixels), ext(pixels), rtol=1e-5, atol=1e-5)
    assert len(loaded.spec.weights_sha256) == 64


@pytest.mark.slow
def test_openvino_float32_matches_tensorflow():
    from features.runtimes import MIXING_TOLERANCE

    size = 2 * PATCH_SIZE
    tf_ext = create_extractor("dinov2_small", weights="none", input_size=size,
                              runtime="tensorflow")
    ov_ext = create_extractor("dinov2_small", weights="none", input_size=size,
                              runtime="openvino")
    pixels = _pixels(3, size, seed=5)
    np.testing.assert_allclose(ov_ext(pixels), tf_ext(pixels), rtol=MIXING_TOLERANCE,
                               atol=MIXING_TOLERANCE)


@pytest.mark.slow  # extraction, training and an OpenVINO export of a ViT-S: ~1 min here
def test_extract_train_report_predict_and_export_with_dinov2(tmp_path, artifacts):
    from pipeline.export import export_model
    from pipeline.workflows import predict_files, train_store
    from tests.conftest import extract, make_image_folder
    from tests.test_export import run_standalone

    data = make_image_folder(tmp_path / "data", classes=("red", "green", "blue"), per_class=8)
    size = 2 * PATCH_SIZE
    store = extract(data, backbone="dinov2_small", weights="none", input_size=size,
                    batch_size=8, runtime="tensorflow").result.path
    outcome = train_store(store, classifier="logreg")[0]
    summary = (outcome.report_dir / "summary.md").read_text()
    assert "dinov2_small" in summary
    images = sorted(str(p) for p in data.rglob("*") if p.is_file())[::3]
    expected = predict_files(outcome.model_path, images, top=3, runtime="tensorflow")
    export_model(outcome.model_path, tmp_path / "out", format="openvino")
    got = run_standalone(tmp_path / "out", images)
    classes = (tmp_path / "out" / "classes.txt").read_text().splitlines()
    for want, have in zip(expected, got, strict=True):
        assert have["label"] == want["label"]
        for label, score in want["top"]:
            assert abs(have["scores"][classes.index(label)] - score) < 1e-4


@pytest.mark.slow  # NNCF quantization of a ViT-S
def test_int8_quantizes_dinov2_and_rebuilds_the_same_network(tmp_path, monkeypatch):
    from features.runtimes import compile_extractor
    from tests.conftest import make_image_folder

    monkeypatch.setenv("TLEARN_CACHE", str(tmp_path / "cache"))
    data = make_image_folder(tmp_path / "data", per_class=6)
    paths = sorted(str(p) for p in data.rglob("*.jpg"))
    size = 2 * PATCH_SIZE
    base = create_extractor("dinov2_small", weights="none", input_size=size,
                            runtime="tensorflow")
    int8 = compile_extractor(base, "openvino", "int8", calibration_paths=paths)
    assert (int8.spec.runtime, int8.spec.precision) == ("openvino", "int8")
    assert int8.spec.calibration
    pixels = _pixels(4, size, seed=6)
    features = int8(pixels)
    assert features.shape == (4, 768) and np.isfinite(features).all()
    # int8 features approximate float32 ones: far closer to them than to other images'
    f32 = base(pixels)
    assert np.corrcoef(features.ravel(), f32.ravel())[0, 1] > 0.9
    again = create_extractor(int8.spec, calibration_paths=paths)
    np.testing.assert_array_equal(again(pixels), features)
