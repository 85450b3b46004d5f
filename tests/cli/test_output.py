"""Output to a pipe or a log: summaries, tables and plans keep long paths whole."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers.cli import FAST
from vedit.cli import create_app


@pytest.fixture
def deep(tmp_path) -> Path:
    """A folder whose path is over 200 characters: a cut or folded line would break it."""
    folder = tmp_path.joinpath("d" * 70, "e" * 70, "f" * 70)
    folder.mkdir(parents=True)
    assert len(str(folder)) > 200
    return folder


def piped(*args, cwd: Path | None = None):
    """A command as a pipe or a log file sees it: stdout is no terminal and $COLUMNS is not set."""
    old = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        return CliRunner().invoke(create_app(), [str(a) for a in args], catch_exceptions=False, env={"COLUMNS": None})
    finally:
        os.chdir(old)


def whole(path: Path, output: str) -> bool:
    return any(str(path) in line for line in output.splitlines())


def test_summaries_and_tables_in_a_pipe_keep_long_paths_whole(clip, deep, tmp_path):
    from helpers.trajectories import trajectory
    from vedit.cache.inversions import InversionCache

    out = deep / "edited.mp4"
    run = piped("run", clip, "-p", "a watercolor painting", "--size", "64x48", "-o", out, *FAST[:-1])
    assert run.exit_code == 0, run.output
    assert whole(out, run.stdout)  # the run's summary
    evaluated = piped("eval", out, "--source", clip)
    assert evaluated.exit_code == 0, evaluated.output
    assert whole(out, evaluated.stdout)  # eval's table of what was compared
    cache = tmp_path / "listed"
    InversionCache(cache).put("ab12" + "0" * 28, trajectory(source=str(deep / "clip.mp4")))
    assert whole(deep / "clip.mp4", piped("cache", "list", "--cache-dir", cache).stdout)
    engines = tmp_path / "engines" / "plain-torchscript-0123456789abcdef"
    engines.mkdir(parents=True)
    parts = {"engine": "torchscript", "pass": "plain", "model": str(deep / "model"), "batches": "4", "dtype": "float32"}
    (engines / "entry.json").write_text(json.dumps({"parts": parts, "files": {}, "created": 0}))
    assert whole(deep / "model", piped("engines", "list", "--engine-cache", engines.parent).stdout)


def test_the_plugin_table_and_a_batch_plan_in_a_pipe_keep_long_paths_whole(clip, deep, tmp_path):
    from helpers.jobs import job_file
    from vedit import plugins
    from vedit.plugins.hookspecs import hookimpl

    class NeedsAFile:
        name = "needs-a-file"

        def unavailable_reason(self):
            return f"needs {deep / 'weights.bin'}"

    class Plugin:
        @hookimpl
        def register_nn_backends(self, register):
            register(NeedsAFile())

    plugins.get_plugin_manager().register(Plugin(), name="needs-a-file")
    assert whole(deep / "weights.bin", piped("plugins").stdout)
    source = deep / "source.mp4"
    source.write_bytes(clip.read_bytes())
    jobs = job_file(tmp_path / "jobs.toml", [{"input": str(source), "prompt": "x", "output": "out/{clip}.mp4"}],
                    run={"model": "tiny", "steps": 2, "inversion-steps": 2})  # fmt: skip
    plan = piped("batch", jobs, "--dry-run", cwd=tmp_path)
    assert plan.exit_code == 0, plan.output
    assert whole(source.relative_to(tmp_path), plan.stdout)  # the plan shows it relative to the job file
