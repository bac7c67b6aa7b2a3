"""Decoding batches: pixel signatures come from the picture as decoded, not the network's input."""

from __future__ import annotations

import numpy as np

from features.batches import compute_batch
from tests.test_check import CLASSES, photo


def test_signatures_are_the_same_whatever_the_network_preprocessing(tmp_path):
    paths = []
    for i, colour in enumerate(CLASSES.values()):
        path = tmp_path / f"photo{i}.png"
        photo(i, colour).save(path)
        paths.append(str(path))

    def caffe(x):  # BGR, minus the ImageNet means (VGG, ResNet50)
        return x[..., ::-1].astype(np.float32) - np.array([103.9, 116.8, 123.7], np.float32)

    def torch(x):  # scaled to [0, 1], minus the means, divided by each channel's deviation
        return (x / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])

    batches = [compute_batch(paths, 0, size=48, preprocess=preprocess,
                             compute=lambda x: x.reshape(len(x), -1)[:, :4])
               for preprocess in (caffe, torch)]
    assert batches[0].signatures is not None
    np.testing.assert_array_equal(batches[0].signatures, batches[1].signatures)
    # and the same at another input size: of the picture as decoded, before its resize
    other_size = compute_batch(paths, 0, size=64, preprocess=caffe,
                               compute=lambda x: x.reshape(len(x), -1)[:, :4]).signatures
    np.testing.assert_array_equal(other_size, batches[0].signatures)
