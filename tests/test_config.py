"""Run options: defaults, vedit.toml, flags, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from vedit.config import RunConfig, defaults_as_toml, load_config, read_config_file
from vedit.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_repository_vedit_toml_states_exactly_the_defaults():
    assert read_config_file(REPO / "vedit.toml") == read_config_file_text(defaults_as_toml())
    assert load_config(REPO / "vedit.toml") == RunConfig()


def read_config_file_text(text: str) -> dict:
    import tomllib

    from vedit.config import validate

    return validate(tomllib.loads(text)["run"], "defaults")


def test_working_directory_file_then_flags(tmp_path):
    (tmp_path / "vedit.toml").write_text('[run]\nsteps = 12\nnegative-prompt = "blurry"\npnp_f_t = 0.6\n')
    config = load_config(cwd=tmp_path, steps=7)
    assert config.steps == 7  # the flag wins
    assert config.negative_prompt == "blurry"
    assert config.pnp_f_t == 0.6
    assert config.editor == "pnp"


def test_the_options_a_user_set_are_recorded_and_a_restated_default_is_not(tmp_path):
    (tmp_path / "vedit.toml").write_text("[run]\nsteps = 50\nguidance = 5.0\n")  # steps: the default again
    config = load_config(cwd=tmp_path, seed=3, inversion_steps=50)
    assert config.given == {"guidance", "seed", "inversion_steps"}  # a flag asks even for the default value
    assert config.replace(batch_size=4).given == config.given  # what the pipeline changes is not the user's
    assert config == load_config(cwd=tmp_path, seed=3) and RunConfig().given == frozenset()  # not an option


def test_explicit_config_path_replaces_the_working_directory_file(tmp_path):
    (tmp_path / "vedit.toml").write_text("[run]\nsteps = 12\n")
    other = tmp_path / "other.toml"
    other.write_text("[run]\nguidance = 3\n")
    config = load_config(other, cwd=tmp_path)
    assert config.steps == 50 and config.guidance == 3.0


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("[run]\nstepz = 3\n", "unknown option 'stepz'"),
        ('[run]\nsteps = "many"\n', "option 'steps' must be int, got str"),
        ("[run]\nguidance = true\n", "option 'guidance' must be float"),
        ("[run]\nstrength = 1.5\n", "option 'strength' must be between 0 and 1"),
        ("[runn]\nsteps = 3\n", "unknown table or key 'runn'"),
        ("[run\n", "not valid TOML"),
    ],
)
def test_bad_files_name_the_problem(tmp_path, text, fragment):
    path = tmp_path / "vedit.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert fragment in str(error.value)
    assert str(path) in str(error.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_loras_and_embeddings_are_lists_whose_files_are_relative_to_the_file_that_names_them(tmp_path):
    (tmp_path / "loras").mkdir()
    (tmp_path / "loras" / "style.safetensors").write_bytes(b"")
    (tmp_path / "v.toml").write_text(
        '[run]\nlora = ["loras/style.safetensors:0.8", "owner/style:0.5", "owner/styles/ink.safetensors"]\n'
        'embedding = "toy.pt:<toy>"\n'
    )
    config = load_config(tmp_path / "v.toml")
    # a LoRA that names a file there is a path; the others are hub ids and stay as written
    assert config.lora == (f"{tmp_path}/loras/style.safetensors:0.8", "owner/style:0.5", "owner/styles/ink.safetensors")
    assert config.embedding == (f"{tmp_path}/toy.pt:<toy>",)  # a file, there or not; one word is a list of one
    assert load_config(tmp_path / "v.toml", lora=["a.safetensors"]).lora == ("a.safetensors",)  # keywords win
    assert RunConfig().lora == () and load_config(cwd=tmp_path).embedding == ()
    with pytest.raises(ConfigError) as error:
        load_config(cwd=tmp_path, lora=[0.8])
    assert str(error.value) == "lora must be a list of str, got list [0.8]"
    (tmp_path / "bad.toml").write_text('[run]\nembedding = ["toy.pt", ""]\n')
    with pytest.raises(ConfigError) as error:
        load_config(tmp_path / "bad.toml")
    expected = f"{tmp_path / 'bad.toml'}: option 'embedding' must not hold an empty item, got ['toy.pt', '']"
    assert str(error.value) == expected


def test_an_item_with_a_scale_splits_at_its_last_colon_and_checks_the_scale(tmp_path):
    import pytest

    from vedit.config import path_and_scale
    from vedit.errors import ConfigError

    assert path_and_scale("canny:0.5", "--control canny:0.5", 0.0, 10.0) == ("canny", 0.5)
    assert path_and_scale("canny", "--control canny") == ("canny", None)
    assert path_and_scale(r"C:\loras\a.safetensors", "x") == (r"C:\loras\a.safetensors", None)
    named = tmp_path / "take:2.mp4"  # a file whose own name holds a colon is one whole item
    named.write_bytes(b"")
    assert path_and_scale(str(named), "x") == (str(named), None)
    with pytest.raises(ConfigError, match=r"^--control canny:x: the scale after the colon must be a number, got 'x'$"):
        path_and_scale("canny:x", "--control canny:x")
    with pytest.raises(ConfigError, match=r"^--control canny:20: the scale must be between 0 and 10, got 20$"):
        path_and_scale("canny:20", "--control canny:20", 0.0, 10.0)
    with pytest.raises(ConfigError, match="the scale must be a finite number, got nan"):
        path_and_scale("a.safetensors:nan", "lora")
