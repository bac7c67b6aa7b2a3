"""DINOv2 vision transformers from keras-hub, as a keras.applications-style family.

The network is keras-hub's own ``DINOV2Backbone`` behind the preset's own
``DINOV2ImageConverter`` (ImageNet normalisation; the resizing is tlearn's image
reader's, to the input size), so it takes RGB pixels in [0, 255] like ConvNeXt.
keras-hub is an optional extra (``pip install 'tlearn[hub]'``), imported only when a
DINOv2 network is built.

Weights: ``"imagenet"`` loads the keras-hub preset (backbone config, weights and
image converter, downloaded from Kaggle into its cache on first use); a path names
the ``model.weights.h5`` of a preset folder written by ``tlearn weights fetch``
(:mod:`features.weights_fetch`), whose ``config.json`` and ``image_converter.json`` sit
beside it; None builds the preset's architecture with random weights. With no
preset to read, that converter normalises as Keras' "torch" mode, the ImageNet mean
and deviation keras-hub converted the presets with.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from features.errors import UserInputError, WeightsUnavailableError
from features.weights import missing_weights_message

#: Side of the square patch each token embeds; DINOv2's input sides are multiples of it.
PATCH_SIZE = 14
#: The keras-hub preset folder holds the weights under this name (keras-hub's own).
PRESET_WEIGHTS_FILE = "model.weights.h5"
HUB_EXTRA = "pip install 'tlearn[hub]'"


@dataclass(frozen=True)
class DinoV2Variant:
    """One keras-hub DINOv2 preset and the architecture it was built with.

    The arguments are those keras-hub's Hugging Face conversion derives from the
    preset's source ``config.json`` (``facebook/dinov2-small``...): patch 14, 12
    layers, an MLP four times the width, layer scale 1.0, position embeddings
    trained at 518 pixels; ``tests/test_dinov2.py`` checks them against the
    parameter count of keras-hub's presets table.
    """

    preset: str
    hidden_dim: int
    num_heads: int
    num_layers: int = 12
    mlp_ratio: int = 4
    position_embedding_size: int = 518

    def backbone_arguments(self, input_size: int) -> dict[str, Any]:
        """``DINOV2Backbone`` keyword arguments for images of ``input_size`` pixels."""
        return {
            "patch_size": PATCH_SIZE, "num_layers": self.num_layers,
            "hidden_dim": self.hidden_dim, "num_heads": self.num_heads,
            "intermediate_dim": self.hidden_dim * self.mlp_ratio,
            "layer_scale_init_value": 1.0,
            "image_shape": (input_size, input_size, 3),
            "position_embedding_shape": (self.position_embedding_size,
                                         self.position_embedding_size),
        }


VARIANTS = {
    "dinov2_small": DinoV2Variant("dinov2_small", hidden_dim=384, num_heads=6),
    "dinov2_base": DinoV2Variant("dinov2_base", hidden_dim=768, num_heads=12),
}


def import_keras_hub(network: str):
    """keras_hub, or the one line naming the extra that installs it."""
    try:
        import keras_hub
    except ImportError as exc:
        raise UserInputError(
            f"{network} needs keras-hub, which is not installed; install it with "
            f"{HUB_EXTRA}, or pick a keras.applications backbone") from exc
    return keras_hub


def torch_mode_converter(keras_hub, input_size: int):
    """A ``DINOV2ImageConverter`` normalising as Keras' "torch" mode, for random weights.

    Its scale and offset are read from ``keras.applications.imagenet_utils``'
    "torch" preprocessing (an affine map per channel) rather than written here.
    """
    from keras.applications import imagenet_utils

    def torch_mode(value: float) -> np.ndarray:
        pixel = np.full((1, 1, 1, 3), value, dtype=np.float32)
        return imagenet_utils.preprocess_input(pixel, mode="torch").reshape(3)

    offset = torch_mode(0.0)
    scale = torch_mode(1.0) - offset
    return keras_hub.layers.DINOV2ImageConverter(
        image_size=(input_size, input_size), scale=scale.tolist(), offset=offset.tolist(),
        interpolation="bicubic", name="image_converter")


def _preset_parts(keras_hub, variant: DinoV2Variant, preset: str, size: int):
    backbone = keras_hub.models.DINOV2Backbone.from_preset(
        preset, image_shape=(size, size, 3), name="dinov2")
    converter = keras_hub.layers.DINOV2ImageConverter.from_preset(
        preset, name="image_converter")
    return backbone, converter


def dinov2(variant: str, *, include_top: bool = False, weights: str | None = None,
           input_shape: tuple[int, int, int] = (224, 224, 3)):
    """A DINOv2 network: pixels in [0, 255] -> converter -> backbone -> tokens.

    Parameters
    ----------
    variant : str
        A key of :data:`VARIANTS`.
    include_top : bool
        Must be False: tlearn pools the tokens itself.
    weights : {"imagenet", None} or str
        The keras-hub preset, random weights, or the ``model.weights.h5`` of a
        fetched preset folder.
    input_shape : tuple
        ``(size, size, 3)``, ``size`` a multiple of :data:`PATCH_SIZE`.

    Returns
    -------
    keras.Model
        Layers ``pixels``, ``image_converter``, ``dinov2``; output (batch, 1 + patches,
        hidden) after the final layer normalisation, the class token first.

    Raises
    ------
    UserInputError
        If keras-hub is missing, or a weights file is not in a preset folder.
    WeightsUnavailableError
        If the preset cannot be downloaded.
    """
    import keras

    if include_top:
        raise ValueError("a DINOv2 backbone has no classification top")
    config = VARIANTS[variant]
    keras_hub = import_keras_hub(variant)
    size = int(input_shape[0])
    if weights is None:
        backbone = keras_hub.models.DINOV2Backbone(**config.backbone_arguments(size),
                                                   name="dinov2")
        converter = torch_mode_converter(keras_hub, size)
    elif weights == "imagenet":
        try:
            backbone, converter = _preset_parts(keras_hub, config, config.preset, size)
        except Exception as exc:  # kagglehub's and keras-hub's download errors vary
            raise WeightsUnavailableError(
                missing_weights_message(variant, exc, PRESET_WEIGHTS_FILE)) from exc
    else:
        folder = Path(weights).parent
        missing = [name for name in ("config.json", "image_converter.json")
                   if not (folder / name).is_file()]
        if Path(weights).name != PRESET_WEIGHTS_FILE or missing:
            raise UserInputError(
                f"{weights} is not the {PRESET_WEIGHTS_FILE} of a keras-hub preset folder "
                f"(with config.json and image_converter.json beside it); get one with "
                f"'tlearn weights fetch {variant} --dest DIR' and pass "
                f"--weights DIR/{PRESET_WEIGHTS_FILE}")
        backbone, converter = _preset_parts(keras_hub, config, str(folder), size)
    # tlearn's image reader has resized every image to the input size already (bilinear,
    # as for every backbone), so the converter's resize would be the identity; it is
    # left out of the graph (OpenVINO has no bicubic resize to convert it to): the
    # converter normalises.
    converter.image_size = None
    # Not "images": that is the name of the backbone's own input.
    images = keras.Input((size, size, 3), name="pixels")
    tokens = backbone({"images": converter(images)})
    return keras.Model(images, tokens, name=variant)
