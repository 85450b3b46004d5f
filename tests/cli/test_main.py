"""``python -m vedit.cli`` is the command line."""

from __future__ import annotations


def test_python_m_vedit_cli_is_the_command_line():
    import subprocess
    import sys

    from vedit import __version__

    done = subprocess.run([sys.executable, "-m", "vedit.cli", "--version"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"vedit {__version__}"
