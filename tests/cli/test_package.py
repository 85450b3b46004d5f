"""``vedit.cli`` as a package: the names the one command-line module gave are still there."""

from __future__ import annotations


def test_the_names_of_the_former_cli_module_are_still_there():
    """Plugin commands written when the command line was one module (``from vedit.cli import user_errors``)."""
    import vedit.cli as cli
    from vedit.cli import cache, options, output

    for name in (
        "err_console",
        "out_console",
        "fail",
        "user_errors",
        "warn",
        "QuietReporter",
        "RichReporter",
        "PlainReporter",
        "reporting",
        "PROGRESS_INTERVAL",
        "UNFOLDED_WIDTH",
    ):
        assert getattr(cli, name) is getattr(output, name), name
    assert cli.INVERSION_STEPS_HELP is options.INVERSION_STEPS_HELP
    assert cli.CHECKPOINT_DAYS == cache.CHECKPOINT_DAYS == 30.0
