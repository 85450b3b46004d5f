"""The installed plugins' options: flat names and aliases, tables, what a run hands each plugin."""

from __future__ import annotations

import pytest

import vedit
from helpers.plugins import registered_editor
from vedit import plugins
from vedit.config import RunConfig, host_names, load_config, read_config_file, validate
from vedit.errors import ConfigError
from vedit.plugins.options import configure, declared, flat_names, unused_options


class Blur:
    name = "blur-test"
    description = "a test editor with options"
    needs_inversion = False

    class Options(vedit.Options):
        radius: int = vedit.option(2, help="Blur radius.", min=0, max=9, aliases=("blur-radius",))
        quiet: bool = vedit.option(False, affects_output=False)


@pytest.fixture
def blur():
    with registered_editor(Blur()) as editor:
        yield editor


def test_the_built_ins_declare_the_settings_that_were_run_config_fields():
    owners = declared()
    assert {spec.name for spec in owners["pnp"].options.specs()} == {"f_t", "attn_t"}
    assert {spec.name for spec in owners["tokenflow"].options.specs()} == {
        "chunk_size", "max_joint_keyframes", "keyframes", "nn_backend"
    }  # fmt: skip
    names = flat_names(host_names())
    for old in ("pnp_f_t", "pnp_attn_t", "chunk_size", "max_joint_keyframes", "keyframes", "nn_backend", "strength"):
        assert old in names, old
    assert names["chunk_size"][0].plugin == "tokenflow" and names["start"][0].plugin == "sdedit"


def test_every_way_of_naming_a_plugin_option_comes_to_the_same(tmp_path, blur):
    by_flag = validate({"blur-test-radius": 3})
    by_alias = validate({"blur_radius": 3})
    by_table = validate({"options": {"blur-test": {"radius": 3}}})
    (tmp_path / "a.toml").write_text("[run.blur-test]\nradius = 3\n")
    (tmp_path / "b.toml").write_text("[run]\nblur-test-radius = 3\n")
    expected = {"options": {"blur_test": {"radius": 3}}}
    assert by_flag == by_alias == by_table == expected
    assert read_config_file(tmp_path / "a.toml") == read_config_file(tmp_path / "b.toml") == expected
    config = load_config(tmp_path / "a.toml", steps=4)
    assert config.plugin_options("blur-test") == Blur.Options(radius=3)
    assert config.blur_radius == 3 and config.blur_test_radius == 3  # read by flat name, as RunConfig fields were
    assert "blur_test_radius" in config.given


@pytest.mark.parametrize(
    "values, origin, message",
    [
        ({"blur-test-radius": 12}, None, "blur_test_radius must be between 0 and 9, got 12"),  # as written
        ({"options": {"blur-test": {"radius": -1}}}, None, "blur_radius must be between 0 and 9, got -1"),
        ({"options": {"blur-test": {"size": 1}}}, None, "editor 'blur-test' has no option 'size' (its options: radius"),
        ({"options": {"nobody": {"x": 1}}}, None, "no installed plugin 'nobody' has options"),
        ({"blur-test": {"radius": 12}}, "v.toml", "v.toml: [run.blur-test] option 'radius' must be between 0 and 9"),
        ({"blur-test": {"radius": "big"}}, "v.toml", "[run.blur-test] option 'radius' must be int, got str 'big'"),
        ({"blur-test": 3}, "v.toml", "unknown option 'blur-test'"),
    ],
)
def test_a_bad_plugin_option_is_one_line_naming_it_as_written(blur, values, origin, message):
    with pytest.raises(ConfigError) as raised:
        validate(values, origin)
    assert message in str(raised.value)


def test_a_run_config_takes_old_keywords_and_keeps_them_through_replace(blur):
    config = RunConfig(prompt="x", chunk_size=4, pnp_f_t=0.3, blur_radius=5)
    assert config.options == {"tokenflow": {"chunk_size": 4}, "pnp": {"f_t": 0.3}, "blur_test": {"radius": 5}}
    changed = config.replace(chunk_size=2)
    assert changed.chunk_size == 2 and changed.pnp_f_t == 0.3 and config.chunk_size == 4
    assert RunConfig().chunk_size == 8 and RunConfig().pnp_attn_t == 0.5  # defaults, read by their old names
    with pytest.raises(TypeError, match="unexpected keyword argument 'chunk_sizes'"):
        RunConfig(chunk_sizes=4)
    with pytest.raises(AttributeError):
        _ = RunConfig().no_such_option


def test_each_plugin_object_is_handed_its_own_options(blur):
    config = RunConfig(blur_radius=7, pnp_f_t=0.25)
    editor, other = plugins.get("editor", "blur-test"), plugins.get("editor", "pnp")
    configure([editor, other, None], config)
    assert editor.options == Blur.Options(radius=7)
    assert other.options.f_t == 0.25 and other.options.attn_t == 0.5


def test_options_for_an_editor_the_run_does_not_use_are_named_in_a_warning(blur):
    config = load_config(cwd=None, blur_radius=7, pnp_f_t=0.25)
    notes = unused_options(config, {"editor": "pnp", "propagator": "tokenflow"})
    assert notes == ["blur_radius ignored: editor 'blur-test' does not run (editor 'pnp' does)"]
    assert unused_options(config.replace(), {"editor": "blur-test", "propagator": "tokenflow"}) == [
        "pnp_f_t ignored: editor 'pnp' does not run (editor 'blur-test' does)"
    ]


def test_a_plugin_found_by_name_always_has_its_options(blur):
    assert plugins.get("editor", "blur-test").options == Blur.Options()  # the defaults, when no run is given
    config = RunConfig(blur_radius=4)
    assert plugins.get("editor", "blur-test", config=config).options.radius == 4
    assert plugins.choose("engine", "eager", "cpu", config=config) is not None  # no options: nothing handed
    assert (
        plugins.choose("engine", "compile", "cpu", config=RunConfig(compile_mode="default")).options.mode == "default"
    )


def test_path_options_in_a_config_file_are_relative_to_its_folder(tmp_path, blur):
    folder = tmp_path / "settings"
    folder.mkdir()
    (folder / "v.toml").write_text('[run]\ninversion = "t.safetensors"\n\n[run.tokenflow]\nkeyframes = "k.json"\n')
    values = read_config_file(folder / "v.toml")
    assert values["inversion"] == str(folder / "t.safetensors")
    assert values["options"]["tokenflow"]["keyframes"] == str(folder / "k.json")
    config = load_config(folder / "v.toml", cwd=tmp_path)
    assert config.keyframes == str(folder / "k.json") and config.inversion == str(folder / "t.safetensors")
