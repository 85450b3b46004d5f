"""The run options on the command line: vedit.toml in the working directory, and every option in the help."""

from __future__ import annotations

from helpers.cli import one_error_line, vedit


def test_config_file_in_the_working_directory(clip, tmp_path):
    (tmp_path / "vedit.toml").write_text(
        '[run]\nmodel = "tiny"\nsteps = 3\ninversion-steps = 3\nsize = "64x48"\neditor = "sdedit"\n'
    )
    result = vedit("run", clip, "-p", "x", "-o", tmp_path / "o", "--start", "0.7", cwd=tmp_path)
    assert result.exit_code == 0, result.output
    assert "sdedit + tokenflow, 2 steps" in result.stdout  # round(0.7 · 3) = 2 steps
    (tmp_path / "vedit.toml").write_text("[run]\nstep = 3\n")
    bad = vedit("run", clip, "-p", "x", "-o", tmp_path / "p", cwd=tmp_path)
    assert bad.exit_code != 0
    assert "unknown option 'step'" in one_error_line(bad)


def test_help_lists_every_run_option():
    from vedit.config import host_specs
    from vedit.plugins.options import declared

    result = vedit("run", "--help")
    text = " ".join(result.stdout.split())
    flags = ["--" + name.replace("_", "-") for name in host_specs()]
    flags += [flag for owner in declared().values() for spec in owner.options.specs() for flag in owner.flags(spec)]
    # the built-ins' settings, RunConfig fields before their plugins declared them, keep their flags
    flags += ["--pnp-f-t", "--pnp-attn-t", "--chunk-size", "--strength", "--start", "--max-joint-keyframes"]
    flags += ["--keyframes", "--nn-backend", "--flow", "--compile-mode", "--raft-weights"]
    for flag in flags:
        assert flag in text, flag
