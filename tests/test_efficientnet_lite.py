import keras
import numpy as np
import pytest

from features.efficientnet_lite import (
    EfficientNetLite0,
    block_names,
    default_weights_path,
    keras_weights_from_torch,
    preprocess_input,
)
from features.torch_checkpoint import read_torch_legacy_checkpoint


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
                                   atol=1e-3, err_msg=f"stage {i:02d}")
    np.testing.assert_allclose(outs[17], ref["pooled_features"], atol=1e-3)
    np.testing.assert_allclose(outs[18], ref["logits"], atol=1e-3)
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
