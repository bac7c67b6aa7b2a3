"""The backbone registry: every row's facts against the published architecture, each family's
preprocessing on known pixels, one default backbone, and what may be registered."""

import inspect
import re

import numpy as np
import pytest

from features.backbones import (
    BACKBONES,
    DEFAULT_BACKBONE,
    BackboneConfig,
    get_backbone,
    register_backbone,
)
from features.efficientnet_lite import VARIANTS as LITE_VARIANTS
from features.efficientnet_lite import block_names
from features.errors import UserInputError
from features.factory import create_extractor
from features.networks import build_base_model
from tests.conftest import REPO_ROOT, by_weight


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
    # stem conv 4x4/4, then three downsamplings conv 2x2/2 (valid); pixels normalised inside
    **{name: ("none", [valid(4, 4)] + [valid(2, 2)] * 3)
       for name in ("convnext_tiny", "convnext_small", "convnext_base")},
    # stem conv 3x3/2 and the first block of four later stages (same padding); pixels
    # normalised inside
    **{f"efficientnetv2_{v}": ("none", [same(2)] * 5) for v in ("b0", "b1", "b2", "b3", "s", "m")},
    # one token per 14x14 patch (conv 14x14/14); pixels normalised inside (the converter)
    "dinov2_small": ("none", [valid(14, 14)]),
    "dinov2_base": ("none", [valid(14, 14)]),
}
# Vision transformers: tokens, not a feature map; tests/test_dinov2.py builds them.
TRANSFORMERS = sorted(name for name, cfg in BACKBONES.items() if cfg.keras_hub_preset)
CNNS = sorted(name for name in BACKBONES if name not in TRANSFORMERS)
# Backbones whose networks come whole from keras.applications, preprocessing included:
# name -> (keras.applications module, class).
KERAS_OWN = {
    "convnext_tiny": ("convnext", "ConvNeXtTiny"),
    "convnext_small": ("convnext", "ConvNeXtSmall"),
    "convnext_base": ("convnext", "ConvNeXtBase"),
    "efficientnetv2_b0": ("efficientnet_v2", "EfficientNetV2B0"),
    "efficientnetv2_b1": ("efficientnet_v2", "EfficientNetV2B1"),
    "efficientnetv2_b2": ("efficientnet_v2", "EfficientNetV2B2"),
    "efficientnetv2_b3": ("efficientnet_v2", "EfficientNetV2B3"),
    "efficientnetv2_s": ("efficientnet_v2", "EfficientNetV2S"),
    "efficientnetv2_m": ("efficientnet_v2", "EfficientNetV2M"),
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
    assert cfg.preprocess.mode == ARCHITECTURES[name][0]
    if name in TRANSFORMERS:  # the class token and the mean of the patch tokens
        assert cfg.feature_size("cls_avg") == 2 * cfg.feature_size("avg") == 2 * cfg.channels
        assert cfg.input_size % cfg.input_size_multiple == 0
        return
    assert cfg.feature_size("flatten") == grid(name, cfg.input_size) ** 2 * cfg.channels
    assert cfg.feature_size("avg") == cfg.feature_size("max") == cfg.channels
    assert cfg.preprocess.mode == ARCHITECTURES[name][0]


@pytest.mark.parametrize("name", sorted(LITE_VARIANTS))
def test_lite_rows_unfreeze_a_block_of_their_variant(name):
    cfg = get_backbone(name)
    assert f"{cfg.default_unfreeze}_dwconv" in {f"{b}_dwconv" for b in block_names(name)}


# The smallest accepted input, and an odd size that tells floor from ceiling divisions.
BUILDS = [by_weight(name, size, pooling)
          for name, cfg in sorted(BACKBONES.items()) if name in CNNS
          for size in (cfg.min_input_size, 2 * cfg.min_input_size + 1)
          for pooling in (cfg.poolings if size == cfg.min_input_size else ("flatten",))]


@pytest.mark.parametrize("name,size,pooling", BUILDS)
def test_built_network_gives_the_registry_feature_size(name, size, pooling):
    cfg = get_backbone(name)
    ext = create_extractor(name, weights="none", input_size=size, pooling=pooling)
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
    builders = (create_extractor,) if name in TRANSFORMERS else (create_extractor,
                                                                  build_base_model)
    for build in builders:
        with pytest.raises(UserInputError, match=f"below the minimum of {too_small + 1}"):
            build(name, weights="none", input_size=too_small)


def test_features_at_the_minimum_size_run_end_to_end():
    ext = create_extractor(DEFAULT_BACKBONE, weights="none", pooling="avg",
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
    # the pixels unchanged: the network normalises them itself
    "none": [[[0, 0, 0], [255, 255, 255], [10, 20, 30], [51, 127, 204]]],
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


@pytest.mark.parametrize("name", [n for n in CNNS if not n.startswith("efficientnet_lite")])
def test_preprocessing_agrees_with_keras_applications(name):
    import keras

    x = np.random.default_rng(4).integers(0, 256, (2, 5, 5, 3)).astype(np.float32)
    module = KERAS_OWN.get(name, (name,))[0]
    keras_out = getattr(keras.applications, module).preprocess_input(x.copy())
    np.testing.assert_allclose(get_backbone(name).preprocess_input(x), keras_out,
                               rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", [by_weight(name) for name in sorted(KERAS_OWN)])
def test_features_equal_the_keras_applications_model_with_its_own_preprocessing(name):
    # keras.applications' own network, pixels in [0, 255] given straight to it, on the
    # same random weights: tlearn adds no preprocessing of its own (a second
    # normalisation would change every feature).
    import keras

    module, class_name = KERAS_OWN[name]
    size = get_backbone(name).min_input_size
    ext = create_extractor(name, weights="none", input_size=size, pooling="avg")
    own = getattr(getattr(keras.applications, module), class_name)(
        include_top=False, weights=None, input_shape=(size, size, 3))
    own.set_weights(ext.model.get_weights())
    x = np.random.default_rng(5).integers(0, 256, (2, size, size, 3)).astype(np.uint8)
    expected = np.asarray(own.predict_on_batch(x.astype(np.float32))).mean(axis=(1, 2))
    got = ext(x)
    assert np.abs(expected).max() > 1e-3  # features that could differ
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


# -- one default backbone -----------------------------------------------------------------------
def _cli_extract_default() -> str:
    from pipeline.cli.stage1 import extract

    return inspect.signature(extract).parameters["backbone"].default


def _library_default(function) -> str:
    return inspect.signature(function).parameters["backbone"].default


def _makefile_default() -> str:
    text = (REPO_ROOT / "Makefile").read_text()
    return re.search(r"^BACKBONE \?= (\S+)$", text, re.MULTILINE).group(1)


def _documented_defaults() -> set[str]:
    # the stage 1 page of the documentation site states the default twice
    text = (REPO_ROOT / "docs" / "guide" / "stage1.md").read_text()
    return {re.search(r"tlearn extract DATA \[--backbone (\w+)\]", text).group(1),
            re.search(r"`(\w+)` is the default backbone", text).group(1)}


def _pipeline_config() -> str:
    from pipeline import config

    return config.DEFAULT_BACKBONE


def _network_settings() -> str:
    # extract_dataset and extract_features take their network from these settings
    from features.settings import NetworkSettings

    return NetworkSettings().backbone


def _run_demo() -> str:
    from pipeline.workflows import run_demo

    return _library_default(run_demo)


DEFAULT_SOURCES = {
    "pipeline.config.DEFAULT_BACKBONE": _pipeline_config,
    "tlearn extract --backbone": _cli_extract_default,
    "features.settings.NetworkSettings": _network_settings,
    "pipeline.workflows.run_demo": _run_demo,
    "Makefile BACKBONE": _makefile_default,
}


@pytest.mark.parametrize("where", DEFAULT_SOURCES)
def test_one_default_backbone_everywhere(where):
    assert DEFAULT_SOURCES[where]() == DEFAULT_BACKBONE


def test_documentation_names_the_default_backbone():
    assert _documented_defaults() == {DEFAULT_BACKBONE}


def test_default_backbone_gets_imagenet_weights_without_network(monkeypatch, tmp_path):
    # No Keras cache to fall back on: the weights must come from the installed package.
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty"))
    cfg = get_backbone(DEFAULT_BACKBONE)
    assert cfg.imagenet_weights_file is None and cfg.weights_package
    ext = create_extractor(DEFAULT_BACKBONE, weights="imagenet",
                                  input_size=cfg.min_input_size)
    assert ext.spec.weights == "imagenet"
    assert not (tmp_path / "empty" / "models").exists()  # Keras downloaded nothing


def test_register_rejects_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        register_backbone(get_backbone("vgg16"))
    assert isinstance(get_backbone("vgg16"), BackboneConfig)


def test_a_backbone_name_may_not_hold_the_join_or_the_tap_prefix():
    from dataclasses import replace

    for name in ("my+net", "my/net"):
        with pytest.raises(ValueError, match="may not contain"):
            register_backbone(replace(BACKBONES["vgg16"], name=name))
    assert get_backbone(" vgg16 + vgg19").name == "vgg16+vgg19"
