"""Errors a user can cause: each carries one line that says what went wrong and what to do."""

from __future__ import annotations


class VeditError(Exception):
    """A problem with the user's input, configuration or environment.

    The CLI prints ``str(error)`` as a single line on stderr and exits with ``exit_code``;
    it never shows a traceback for these.
    """

    exit_code = 1


class InputError(VeditError):
    """The input clip (or folder of frames) is missing, unreadable or empty."""

    exit_code = 2


class OutputError(VeditError):
    """The output cannot be written where the user asked."""

    exit_code = 3


class ConfigError(VeditError):
    """A configuration file or option is unknown, malformed or out of range."""

    exit_code = 4


class PluginError(VeditError):
    """A plugin is unknown, cannot run here, or conflicts with another."""

    exit_code = 5


class ModelError(VeditError):
    """Model weights are unavailable or do not fit the device."""

    exit_code = 6
