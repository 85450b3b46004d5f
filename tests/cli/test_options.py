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


def test_a_plugin_option_out_of_range_is_one_line_and_exit_4_by_any_of_its_flags(clip, tmp_path, monkeypatch):
    from vedit.model import loading

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(loading, "load_model", no_loading)
    for flags, message in [
        (["--pnp-f-t", "1.5"], "--pnp-f-t must be between 0 and 1, got 1.5"),
        (["--chunk-size", "0"], "--chunk-size must be between 1 and 1024, got 0"),
        (["--tokenflow-chunk-size", "0"], "--chunk-size must be between 1 and 1024, got 0"),  # its best-known flag
        (["--strength", "nan"], "--strength must be a finite number (between 0 and 1), got nan"),
    ]:
        result = vedit("run", clip, "-p", "x", "-o", tmp_path / "o.mp4", "--model", "tiny", *flags, cwd=tmp_path)
        assert result.exit_code == 4, (flags, result.output)
        assert one_error_line(result) == f"vedit: error: {message}"
        assert not (tmp_path / "o.mp4").exists()


def test_invert_and_engines_build_take_the_run_options_they_depend_on_from_the_one_declaration():
    from vedit.config import INVERT, host_specs

    invert = " ".join(vedit("invert", "--help").stdout.split())
    for name, (_spec, where) in host_specs().items():
        flag = "--" + name.replace("_", "-")
        if INVERT in where.commands and INVERT not in where.hidden_in:
            assert f"{flag} " in invert, flag
    assert "--prompt " not in invert and "--pnp-f-t" not in invert and "--guidance " not in invert
    assert "Sampling steps T." in invert  # the same help as vedit run's, not a second text
    build = " ".join(vedit("engines", "build", "--help").stdout.split())
    assert "--chunk-size" in build and "--max-joint-keyframes" in build and "--engine-cache" in build
