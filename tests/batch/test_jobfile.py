"""Job files validated as a whole: every mistake reported with its job and key, before any work."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.jobs import RUN, batch_clips, job_file, vedit
from vedit.batch.jobfile import JobFileError, read_job_file


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """Two 4-frame clips in a folder of their own."""
    return batch_clips(tmp_path_factory.mktemp("batch-clips"))


def test_every_mistake_of_a_job_file_is_reported_with_its_job_and_key(tmp_path, clips):
    path = job_file(
        tmp_path / "jobs.toml",
        [
            {"name": "ok", "input": str(clips / "pattern.mp4"), "prompt": "x"},
            {"name": "city", "input": str(clips / "pattern.mp4"), "prompt": "x", "stepz": 3},
            {"input": str(clips / "*.avi"), "prompt": "x"},
            {
                "name": "pattern",
                "input": str(clips / "pattern.mp4"),
                "prompt": "x",
                "output": "out/{clip}-{colour}.mp4",
            },
            {"name": "both", "input": str(clips / "pattern.mp4"), "prompt": "x", "prompts": ["y"]},
            {"name": "nothing", "input": str(clips / "pattern.mp4")},
        ],
        run={**RUN, "guidance": 500},
    )
    with pytest.raises(JobFileError) as caught:
        read_job_file(path)
    errors = caught.value.errors
    where = str(path)
    assert f"{where}: [run]: option 'guidance' must be between 0 and 100, got 500" in errors
    assert any(e.startswith(f"{where}: job 2 ('city'): unknown option 'stepz' (did you mean 'steps'?") for e in errors)
    assert f"{where}: job 3: input {str(clips / '*.avi')!r} matches no file" in errors
    assert any(
        e.startswith(
            f"{where}: job 4 ('pattern'): output pattern 'out/{{clip}}-{{colour}}.mp4' has unknown field {{colour}}"
        )
        for e in errors
    )
    assert f"{where}: job 5 ('both'): give 'prompt' or 'prompts', not both" in errors
    assert any(e.startswith(f"{where}: job 6 ('nothing'): no target prompt") for e in errors)
    assert len(errors) == 6, errors


def test_a_number_that_is_not_finite_in_a_job_file_is_an_error_before_any_work(tmp_path, clips):
    path = job_file(
        tmp_path / "jobs.toml",
        [
            {"name": "grey", "input": str(clips / "pattern.mp4"), "prompt": "x", "guidance": float("nan")},
            {"input": str(clips / "pattern.mp4"), "prompt": "y", "cache-max-gb": float("inf")},
        ],
    )
    result = vedit("batch", path)
    assert result.exit_code == 4
    assert result.stderr.splitlines() == [
        f"vedit: error: {path}: job 1 ('grey'): option 'guidance' must be a finite number (between 0 and 100), got nan",
        f"vedit: error: {path}: job 2: option 'cache-max-gb' must be a finite number (0 or more), got inf",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jobs.toml"]  # no output, no summary, no cache
