"""The options schema: vedit.Options classes, vedit.option fields, and the checks every surface shares."""

from __future__ import annotations

import math

import pytest

import vedit
from vedit.errors import ConfigError


class Smooth:
    name = "smooth"

    class Options(vedit.Options):
        strength: float = vedit.option(0.5, help="How strongly.", min=0.0, max=1.0)
        passes: int = 3  # a plain default is an option too
        verbose: bool = vedit.option(False, help="Say more.", affects_output=False)
        mask: str | None = vedit.option(None, help="A mask image.", path=True)
        batch: int | str = vedit.option("auto", help="A number or auto.", min=1, choices=("auto",))
        mode: str = vedit.option("fast", choices=("fast", "exact"))


def test_fields_are_collected_in_order_with_their_types_and_flags_of_meaning():
    specs = {spec.name: spec for spec in Smooth.Options.specs()}
    assert list(specs) == ["strength", "passes", "verbose", "mask", "batch", "mode"]
    assert specs["strength"].kinds == (float,) and (specs["strength"].min, specs["strength"].max) == (0.0, 1.0)
    assert specs["passes"].default == 3 and specs["passes"].kinds == (int,) and specs["passes"].affects_output
    assert not specs["verbose"].affects_output
    assert specs["mask"].path and specs["mask"].optional
    assert Smooth.Options.strength == 0.5  # the class attribute reads as the default


def test_an_instance_checks_its_values_is_immutable_and_compares_by_value():
    options = Smooth.Options(strength=1, batch="4")
    assert options.strength == 1.0 and isinstance(options.strength, float)  # an int where a float is wanted
    assert options.batch == 4  # a whole number given as text
    assert options.as_dict()["passes"] == 3
    assert options == Smooth.Options(strength=1.0, batch=4)
    assert options != Smooth.Options()
    assert options.replace(passes=5).passes == 5 and options.passes == 3
    with pytest.raises(AttributeError, match="immutable"):
        options.strength = 0.2  # type: ignore[misc]


@pytest.mark.parametrize(
    "values, message",
    [
        ({"strength": 1.5}, "strength must be between 0 and 1, got 1.5"),
        ({"strength": math.nan}, "strength must be a finite number (between 0 and 1), got nan"),
        ({"strength": "high"}, "strength must be float, got str 'high'"),
        ({"passes": 2.5}, "passes must be int, got float 2.5"),
        ({"verbose": 1}, "verbose must be bool, got int 1"),
        ({"batch": "lots"}, "batch must be auto or a whole number, got 'lots'"),
        ({"batch": 0}, "batch must be 1 or more, got 0"),
        ({"mode": "slow"}, "mode must be one of fast, exact, got 'slow'"),
        ({"colour": "red"}, "has no option 'colour' (known: strength, passes, verbose, mask, batch, mode)"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_option(values, message):
    with pytest.raises(ConfigError) as raised:
        Smooth.Options(**values)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    "name, text, expected",
    [
        ("strength", "0.25", 0.25),
        ("verbose", "yes", True),
        ("verbose", "off", False),
        ("mask", "none", None),
        ("batch", "auto", "auto"),
        ("batch", "16", 16),
        ("passes", "7", 7),
    ],
)
def test_text_from_a_command_line_is_parsed_as_the_option_type(name, text, expected):
    spec = {spec.name: spec for spec in Smooth.Options.specs()}[name]
    assert spec.parse(text, f"--smooth-{name}") == expected


def test_text_that_is_not_of_the_type_names_the_flag():
    spec = {spec.name: spec for spec in Smooth.Options.specs()}["passes"]
    with pytest.raises(ConfigError, match="--smooth-passes must be an integer, got 'many'"):
        spec.parse("many", "--smooth-passes")


def test_a_bad_declaration_is_the_plugin_authors_error_at_class_creation():
    with pytest.raises(TypeError, match=r"the default of .*Bad.level must be between 0 and 1, got 2"):

        class Bad(vedit.Options):
            level: float = vedit.option(2.0, min=0.0, max=1.0)

    with pytest.raises(TypeError, match="an option's type is bool, int, float, str"):

        class Listed(vedit.Options):
            names: list = vedit.option([])  # type: ignore[type-arg]

    with pytest.raises(TypeError, match=r"Words.names: a plugin's option cannot be a list \(tuple\[str, ...\]\) yet"):

        class Words(vedit.Options):
            names: tuple[str, ...] = vedit.option(())

    with pytest.raises(TypeError, match="needs a default"):

        class Missing(vedit.Options):
            level: float = vedit.option()


def test_options_are_inherited_and_may_be_overridden():
    class Base(vedit.Options):
        a: int = 1
        b: int = 2

    class Child(Base):
        b: int = vedit.option(5, min=0)
        c: str = "x"

    assert [spec.name for spec in Child.specs()] == ["a", "b", "c"]
    assert Child().as_dict() == {"a": 1, "b": 5, "c": "x"}
    assert Base().b == 2
