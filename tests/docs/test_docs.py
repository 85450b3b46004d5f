"""The docs say what the code does: the generated command-line reference, the copies of files and the examples
they hold, the hooks they document, and the README's test command that CI runs."""

from __future__ import annotations

import importlib.util
import types
from pathlib import Path

import numpy as np
import pytest

from conftest import make_clip
from helpers.checks import no_heavy_work  # noqa: F401  (a fixture, used by name)

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"


def _gen_cli():
    spec = importlib.util.spec_from_file_location("gen_cli", DOCS / "gen_cli.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fenced(page: Path, language: str, after: str = "") -> str:
    """The first ```language block of ``page`` after the text ``after``."""
    text = page.read_text()
    text = text[text.index(after) :]
    block = text[text.index(f"```{language}\n") + len(f"```{language}\n") :]
    return block[: block.index("```")]


def test_the_command_line_reference_is_what_the_code_gives():
    page = DOCS / "reference" / "cli.md"
    assert page.read_text() == _gen_cli().render(), "run 'python docs/gen_cli.py' and commit docs/reference/cli.md"


def test_the_reference_holds_every_command_and_flag_with_its_help_and_default():
    text = _gen_cli().render()
    for command in (
        "vedit run",
        "vedit invert",
        "vedit eval",
        "vedit batch",
        "vedit engines build",
        "vedit cache prune",
        "vedit plugins",
        "vedit bench edit",
    ):
        assert f"\n## {command}\n" in text or f"\n### {command}\n" in text, command
    assert "```\nvedit run [OPTIONS] CLIP\n```" in text
    assert "| `--inversion-steps` | INTEGER | 50 | DDIM inversion steps." in text
    assert "| `--output`, `-o` | PATH | &lt;clip&gt;-edited.mp4 here | Output .mp4/.mov/.mkv (H.264)" in text
    assert "| `--eval` / `--no-eval` |  |  | After writing" in text
    assert "| `--reuse-inversion` / `--no-reuse-inversion` |  | no-reuse-inversion |" in text  # a default Typer adds
    assert "NAME\\[:KEY=VALUE...\\]" in text  # rich's escapes undone, Markdown's added
    assert "--seed" not in text.split("\n## vedit invert\n")[1].split("\n## ")[0]  # hidden: ignored by invert


def test_the_reference_does_not_depend_on_the_terminal_width(monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    narrow = _gen_cli().render()
    monkeypatch.setenv("COLUMNS", "300")
    assert _gen_cli().render() == narrow


def test_a_third_party_command_is_left_out_of_the_reference():
    import typer

    from vedit import plugins
    from vedit.plugins.hookspecs import hookimpl

    class ThirdParty:
        @hookimpl
        def register_commands(self, app):
            @app.command("thirdparty")
            def thirdparty() -> None:
                """A command vedit does not ship."""

    plugins.get_plugin_manager().register(ThirdParty(), name="third-party")
    from vedit.cli import create_app

    assert "thirdparty" in typer.main.get_command(create_app()).commands  # it is there to be left out
    assert "thirdparty" not in _gen_cli().render()


def test_check_fails_on_a_page_the_code_no_longer_gives(tmp_path, capsys):
    gen_cli = _gen_cli()
    page = tmp_path / "cli.md"
    page.write_text(gen_cli.render().replace("Sampling steps T.", "Sampling steps."))
    assert gen_cli.main(["--check"], page=page) == 1
    assert "is not what the command line gives now: run 'python docs/gen_cli.py'" in capsys.readouterr().err
    assert gen_cli.main([], page=page) == 0
    assert gen_cli.main(["--check"], page=page) == 0
    assert "Sampling steps T." in page.read_text()


def test_the_configuration_page_shows_the_repository_vedit_toml_as_it_is():
    block = _fenced(DOCS / "usage" / "configuration.md", "toml")
    assert block == (REPO / "vedit.toml").read_text()


def test_the_python_api_example_runs_as_written(tmp_path, monkeypatch, capsys):
    code = _fenced(DOCS / "usage" / "python-api.md", "python")
    monkeypatch.chdir(tmp_path)
    make_clip(tmp_path / "clip.mp4", frames=2)  # the example's clip, short so that the test is quick
    exec(compile(code, "docs/usage/python-api.md", "exec"), {})
    edited, inverted = capsys.readouterr().out.splitlines()
    assert edited.split()[0] == "2" and edited.split()[-1] == "computed"
    assert inverted.split()[:2] == ["cached", "clip.safetensors"]  # the edit's inversion, from the cache
    assert (tmp_path / "out.mp4").is_file() and (tmp_path / "clip.safetensors").is_file()


def test_every_hook_has_a_docstring_and_is_in_the_docs():
    from vedit.plugins.manager import hookspecs

    page = (DOCS / "plugins" / "hooks.md").read_text()
    names = [n for n in dir(hookspecs) if n.startswith(("register_", "choose_"))]
    assert len(names) == 12
    for name in names:
        assert getattr(hookspecs, name).__doc__, name
        assert f"`{name}" in page, f"hook {name} is not documented in docs/plugins/hooks.md"


def test_ci_runs_the_readme_test_command():
    readme = _fenced(REPO / "README.md", "bash", after="## Quick start")
    test_command = readme.strip().splitlines()[-1]
    assert test_command == "python -m pytest -q"
    ci = (REPO / ".ci" / "run").read_text()
    assert ci.rstrip().splitlines()[-1] == test_command


def tiny_dpt(folder: Path) -> Path:
    """A small random DPT depth model and its image processor, saved as transformers' save_pretrained saves them."""
    import torch
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    config = DPTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=37,
        neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, backbone_out_indices=[0, 1, 2, 3],
        reassemble_factors=[4, 2, 1, 0.5], is_hybrid=False, initializer_range=0.2,  # weights large enough to vary
    )  # fmt: skip
    torch.manual_seed(0)
    DPTForDepthEstimation(config).save_pretrained(folder)
    DPTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def annotator_example() -> types.ModuleType:
    """The annotator page's example, run as written into a module of its own, as a plugin package's would be."""
    example = types.ModuleType("depth_example")
    exec(
        compile(_fenced(DOCS / "plugins" / "annotators.md", "python"), "docs/plugins/annotators.md", "exec"),
        example.__dict__,
    )
    return example


def test_the_annotator_example_says_plainly_when_it_has_no_weights(tmp_path, no_heavy_work):
    from helpers.cli import one_error_line, vedit
    from vedit import plugins
    from vedit.errors import ConfigError, ModelError

    example = annotator_example()
    depth = example.Depth()
    depth.options = depth.Options()
    with pytest.raises(ConfigError) as error:
        depth.check()
    assert str(error.value) == (
        "annotator 'depth' needs weights: pass depth_weights=FOLDER, a DPT model saved by transformers (such as "
        "Intel/dpt-hybrid-midas); nothing is downloaded"
    )
    depth.options = depth.Options(weights=str(tmp_path))
    with pytest.raises(ModelError, match=r"depth_weights='.*': no model.safetensors there; give the folder"):
        depth.check()
    # registered as a plugin package's module is: the run stops before any work, in the example's words
    plugins.get_plugin_manager().register(example, name="depth-example")
    clip = make_clip(tmp_path / "clip.mp4")
    result = vedit("run", clip, "-p", "x", "--model", "tiny", "--control", "depth", "-o", tmp_path / "o.mp4")
    assert result.exit_code == 4
    assert one_error_line(result) == (
        "vedit: error: annotator 'depth' needs weights: pass --depth-weights FOLDER, a DPT model saved by "
        "transformers (such as Intel/dpt-hybrid-midas); nothing is downloaded"
    )


@pytest.mark.slow
def test_the_annotator_example_makes_depth_maps_with_local_weights(tmp_path):
    depth = annotator_example().Depth()
    depth.options = depth.Options(weights=str(tiny_dpt(tmp_path / "dpt")))
    depth.check()
    frames = np.random.default_rng(0).integers(0, 256, (2, 48, 64, 3), dtype=np.uint8)
    made = depth.annotate(frames)
    assert made.shape == frames.shape and made.dtype == np.uint8
    assert [(int(m.min()), int(m.max())) for m in made] == [(0, 255), (0, 255)]  # scaled per frame
    assert np.array_equal(made[..., 0], made[..., 2]) and not np.array_equal(made[0], made[1])
