"""``vedit plugins`` and plugins from the command line: what is listed, third-party editors and post-processors."""

from __future__ import annotations

import numpy as np

from helpers.cli import vedit
from vedit.io.reader import FrameReader


def test_third_party_editor_and_postprocessor_from_the_cli(example_plugin, clip, tmp_path):
    plain, negative = tmp_path / "plain", tmp_path / "negative"
    args = ["--size", "64x48", "--editor", "reconstruct", "--propagator", "none", "--model", "tiny", "--quiet"]
    assert vedit("run", clip, "-p", "x", "-o", plain, *args).exit_code == 0
    assert vedit("run", clip, "-p", "x", "-o", negative, "--postprocess", "negative", *args).exit_code == 0
    a, b = FrameReader(plain).read_all(), FrameReader(negative).read_all()
    assert np.array_equal(b, 255 - a)
    listing = vedit("plugins")
    assert "reconstruct" in listing.stdout and "vedit-example-plugin" in listing.stdout and "0.3.1" in listing.stdout
    assert "example_broken" in listing.stderr


def test_plugins_lists_everything_with_availability():
    result = vedit("plugins")
    assert result.exit_code == 0
    for name in ("img2img", "pnp", "sdedit", "tokenflow", "none", "eager", "torch", "faiss"):
        assert f" {name} " in result.stdout, name
    assert "0.1.0" in result.stdout


def test_an_empty_vedit_plugins_keeps_vedits_own_plugins_and_commands(monkeypatch):
    from vedit import plugins

    monkeypatch.setenv("VEDIT_PLUGINS", "")
    plugins.reset()
    listed = vedit("plugins")
    assert listed.exit_code == 0 and listed.stderr == ""
    for name in ("pnp", "tokenflow", "eager", "torch", "dis", "deflicker-luma"):
        assert f" {name} " in listed.stdout, name
    assert " vedit " in listed.stdout and " 0.1.0 " in listed.stdout
    assert vedit("bench", "--help").exit_code == 0  # the bench command comes from a built-in plugin too
