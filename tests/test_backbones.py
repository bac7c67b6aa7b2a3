import numpy as np
import pytest

from features.backbones import (
    BACKBONES,
    BackboneConfig,
    build_feature_extractor,
    build_from_spec,
    get_backbone,
    register_backbone,
)
from features.errors import UserInputError, WeightsUnavailableError

# name, native input, flatten size, avg size: the published shapes of each network.
EXPECTED = [
    ("vgg16", 224, 7 * 7 * 512, 512),
    ("vgg19", 224, 7 * 7 * 512, 512),
    ("resnet50", 224, 7 * 7 * 2048, 2048),
    ("inception_v3", 299, 8 * 8 * 2048, 2048),
    ("xception", 299, 10 * 10 * 2048, 2048),
    ("efficientnet_lite0", 224, 7 * 7 * 1280, 1280),
]


def test_registry_lists_every_family():
    assert sorted(BACKBONES) == sorted(name for name, *_ in EXPECTED)


@pytest.mark.parametrize("name,size,flat,avg", EXPECTED)
def test_registry_sizes(name, size, flat, avg):
    cfg = get_backbone(name)
    assert cfg.input_size == size
    assert cfg.feature_size("flatten") == flat
    assert cfg.feature_size("avg") == cfg.feature_size("max") == avg


@pytest.mark.slow
@pytest.mark.parametrize("name,size,flat,avg", EXPECTED)
def test_built_network_matches_registry(name, size, flat, avg):
    ext = build_feature_extractor(name, weights="none", pooling="flatten")
    assert ext.spec.feature_dim == flat
    assert ext.model.output.shape[1] == flat


@pytest.mark.parametrize("name", ["vgg16", "efficientnet_lite0"])
def test_small_input_features(name):
    ext = build_feature_extractor(name, weights="none", input_size=32, pooling="avg")
    images = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    feats = ext(images)
    assert feats.shape == (3, get_backbone(name).channels)
    assert feats.dtype == np.float32
    assert np.isfinite(feats).all()


def test_vgg16_flatten_at_native_size_is_25088():
    ext = build_feature_extractor("vgg16", weights="none")
    assert ext.spec.pooling == "flatten"
    assert ext.spec.feature_dim == 25088


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
    assert "--weights PATH" in message and "efficientnet_lite0" in message


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
