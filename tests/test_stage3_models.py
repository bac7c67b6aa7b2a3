"""The fine-tuning network: which layers train, and BatchNorm kept in inference mode."""

import numpy as np
import pytest

from pipeline.augmentation import AugmentationConfig
from pipeline.stage3 import (
    build_finetune_model,
    find_unfreeze_index,
    freeze_base,
    unfreeze_base_from,
)
from tests.test_stage3_training import eager  # noqa: F401 - fixture


def resnet50():
    # ResNet50 has BatchNorm after every convolution and, unlike a randomly initialised
    # EfficientNet-Lite0, passes a usable signal at 32 px, so its layers do train
    return build_finetune_model("resnet50", 2, weights="none", input_size=32,
                                augmentation=AugmentationConfig(enabled=False))


def batchnorm_statistics(base) -> list[np.ndarray]:
    import keras

    return [v.numpy().copy() for layer in base.layers
            if isinstance(layer, keras.layers.BatchNormalization)
            for v in (layer.moving_mean, layer.moving_variance)]


def train_one_epoch(model) -> None:
    import keras

    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (8, 32, 32, 3)).astype("float32")
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    model.fit(images, np.arange(8) % 2, batch_size=4, epochs=1, verbose=0)


def test_unfreeze_starts_at_the_named_layer_and_leaves_batchnorm_frozen():
    import keras

    model, base = resnet50()
    freeze_base(model)
    assert not any(layer.trainable for layer in base.layers)
    unfreeze_base_from(model, "conv5_block1")
    start = find_unfreeze_index(base, "conv5_block1")
    assert base.layers[start].name.startswith("conv5_block1")
    assert not base.layers[start - 1].name.startswith("conv5_block1")
    for i, layer in enumerate(base.layers):
        is_batchnorm = isinstance(layer, keras.layers.BatchNormalization)
        assert layer.trainable == (i >= start and not is_batchnorm), (i, layer.name)
    assert any(isinstance(layer, keras.layers.BatchNormalization)
               for layer in base.layers[start:])  # the rule was put to the test


@pytest.mark.usefixtures("eager")
def test_batchnorm_statistics_do_not_move_in_training_even_after_reloading(tmp_path):
    import keras

    model, base = resnet50()
    unfreeze_base_from(model, "all")
    before = batchnorm_statistics(base)
    trainable = [v.numpy().copy() for v in base.trainable_weights]
    train_one_epoch(model)
    assert not all(np.array_equal(a, v.numpy())  # the rest of the base did train
                   for a, v in zip(trainable, base.trainable_weights, strict=True))
    for a, b in zip(before, batchnorm_statistics(base), strict=True):
        np.testing.assert_array_equal(a, b)

    # a checkpoint loaded back (how a resumed run continues) keeps BatchNorm frozen
    model.save(tmp_path / "checkpoint.keras")
    loaded = keras.models.load_model(tmp_path / "checkpoint.keras")
    loaded_base = next(layer for layer in loaded.layers if isinstance(layer, keras.Model))
    train_one_epoch(loaded)
    for a, b in zip(before, batchnorm_statistics(loaded_base), strict=True):
        np.testing.assert_array_equal(a, b)
