"""The one registry type: every table of named things answers a typo the same way."""

import pytest

from classifiers.registry import CLASSIFIERS
from features.backbones import BACKBONES
from features.efficientnet_lite import VARIANTS
from features.errors import UserInputError
from features.registries import Registry, UnknownNameError, check_choice
from features.runtimes import RUNTIMES
from pipeline.catalog import REMOTE_DATASETS
from pipeline.engines import ENGINES


def test_a_registry_keeps_order_and_refuses_a_second_entry_of_a_name():
    table: Registry[int] = Registry("colour")
    table.register("red", 1)
    table.register("green", 2)
    assert table.names() == ["red", "green"] == list(table)
    assert table["green"] == 2 and len(table) == 2 and "red" in table
    with pytest.raises(ValueError, match="colour 'red' is already registered"):
        table.register("red", 3)


def test_an_unknown_name_is_one_line_naming_every_choice_and_the_closest():
    table: Registry[int] = Registry("colour")
    for n, name in enumerate(("red", "green", "blue")):
        table.register(name, n)
    with pytest.raises(UserInputError) as caught:
        table["gren"]
    assert str(caught.value) == ("unknown colour 'gren'; choose one of: red, green, blue; "
                                 "did you mean green?")
    with pytest.raises(UserInputError) as far:
        table["xyz"]
    assert "did you mean" not in str(far.value)
    # Still a mapping: a missing key is a KeyError to dict-like code.
    assert table.get("gren") is None
    assert isinstance(caught.value, KeyError)


def test_check_choice_uses_the_same_message():
    with pytest.raises(UnknownNameError, match=r"^unknown pooling 'mean'; choose one of: "
                                               r"flatten, avg, max$"):
        check_choice("pooling", "mean", ("flatten", "avg", "max"))
    check_choice("pooling", "avg", ("flatten", "avg", "max"))


@pytest.mark.parametrize("registry,what", [
    (BACKBONES, "backbone"), (RUNTIMES, "runtime"), (CLASSIFIERS, "classifier"),
    (REMOTE_DATASETS, "dataset"), (VARIANTS, "EfficientNet-Lite variant"), (ENGINES, "engine"),
])
def test_every_table_of_named_things_is_a_registry(registry, what):
    assert isinstance(registry, Registry)
    with pytest.raises(UserInputError, match=f"^unknown {what} 'nope'; choose one of: "
                                             f"{registry.names()[0]}"):
        registry["nope"]
