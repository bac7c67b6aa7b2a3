"""Preprocessing: one function per family, mapping RGB pixels in [0, 255] to what a network saw.

As in ``keras.applications.imagenet_utils``: the "caffe" mode of VGG and ResNet, the
"tf" mode of Inception and Xception, and EfficientNet-Lite's own ``(x - 127) / 128``
(defined beside the family, :func:`features.efficientnet_lite.preprocess_input`), and
none at all for ConvNeXt and EfficientNetV2, whose networks normalise their pixels
themselves. A :class:`Preprocessing` carries the description recorded in every feature
specification.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from features.efficientnet_lite import preprocess_input as preprocess_lite

# keras.applications.imagenet_utils, mode "caffe": ImageNet means in BGR order.
_CAFFE_MEANS_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)


def preprocess_caffe(x: Any) -> np.ndarray:
    """VGG and ResNet preprocessing (Keras' "caffe" mode): RGB to BGR, minus the ImageNet means.

    Parameters
    ----------
    x : array-like
        Images, channels last, RGB, values in [0, 255].

    Returns
    -------
    numpy.ndarray
        A new float32 array of the same shape, BGR, not scaled.
    """
    return np.asarray(x, dtype=np.float32)[..., ::-1] - _CAFFE_MEANS_BGR


def preprocess_tf(x: Any) -> np.ndarray:
    """Inception and Xception preprocessing (Keras' "tf" mode): ``x / 127.5 - 1``.

    Parameters
    ----------
    x : array-like
        Images, channels last, RGB, values in [0, 255].

    Returns
    -------
    numpy.ndarray
        A new float32 array of the same shape, values in [-1, 1].
    """
    return np.asarray(x, dtype=np.float32) / 127.5 - 1.0


def preprocess_none(x: Any) -> np.ndarray:
    """ConvNeXt and EfficientNetV2 preprocessing: none, the pixels as they are.

    Their ``keras.applications`` networks (``include_preprocessing=True``) begin with
    their own normalisation layers, so they take RGB values in [0, 255].

    Parameters
    ----------
    x : array-like
        Images, channels last, RGB, values in [0, 255].

    Returns
    -------
    numpy.ndarray
        A new float32 array of the same shape and values.
    """
    return np.array(x, dtype=np.float32, copy=True)


@dataclass(frozen=True)
class Preprocessing:
    """A preprocessing function and the description recorded in feature specifications."""

    mode: str
    function: Callable[[Any], np.ndarray] = field(repr=False)
    description: str


CAFFE = Preprocessing("caffe", preprocess_caffe,
                      "caffe: RGB->BGR, minus ImageNet channel means, no scaling")
TF = Preprocessing("tf", preprocess_tf, "tf: x / 127.5 - 1 (range [-1, 1])")
LITE = Preprocessing("lite", preprocess_lite, "lite: (x - 127) / 128")
NONE = Preprocessing("none", preprocess_none,
                     "none: RGB in [0, 255], normalised inside the network")
