"""The network settings: one frozen object, checked when made, taken by every entry point."""

import dataclasses

import numpy as np
import pytest

from features.errors import UserInputError
from features.factory import create_extractor
from features.settings import NetworkSettings

TINY = NetworkSettings("vgg16", weights="none", input_size=32, pooling="avg")


def test_a_typo_in_the_backbone_fails_when_the_settings_are_made():
    with pytest.raises(UserInputError, match="vgg61"):
        NetworkSettings("vgg61")


def test_settings_are_frozen_and_a_list_of_taps_is_frozen_too():
    settings = NetworkSettings("efficientnet_lite0", taps=["block4c", "block5d"])
    assert settings.taps == ("block4c", "block5d")
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.mirror = True


def test_the_factory_takes_settings_or_keyword_choices_and_builds_the_same_network():
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    by_settings = create_extractor(TINY)
    by_keywords = create_extractor("vgg16", weights="none", input_size=32, pooling="avg")
    assert by_settings.spec == by_keywords.spec
    np.testing.assert_allclose(by_settings(images), by_keywords(images), rtol=1e-5, atol=1e-6)


def test_the_factory_refuses_settings_with_more_choices_and_unknown_choices():
    with pytest.raises(TypeError, match="not both"):
        create_extractor(TINY, mirror=True)  # one of the two would silently lose
    with pytest.raises(TypeError, match="unknown settings: mirrored"):
        create_extractor("vgg16", mirrored=True)
