"""The one entry point from a name or a recorded spec to an extractor."""

import numpy as np
import pytest

from features.errors import UserInputError
from features.factory import create_extractor
from features.runtimes import TENSORFLOW

TINY = {"weights": "none", "input_size": 32, "pooling": "avg"}


def test_a_spec_rebuilds_the_network_that_made_its_features():
    first = create_extractor("efficientnet_lite0", **TINY, mirror=True)
    again = create_extractor(first.spec)
    assert again.spec == first.spec and again.spec.runtime == TENSORFLOW
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_allclose(again(images), first(images), rtol=1e-5, atol=1e-6)


def test_a_spec_fixes_the_network_so_other_choices_are_refused():
    spec = create_extractor("efficientnet_lite0", **TINY).spec
    with pytest.raises(UserInputError, match=r"a recorded feature spec fixes pooling, mirror; "
                                             r"pass the backbone's name"):
        create_extractor(spec, pooling="max", mirror=True)
