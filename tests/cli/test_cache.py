"""vedit cache: list, rm, clear and prune of inversions and checkpoints, and one line when the folder cannot be
read."""

from __future__ import annotations

import os
import time

import pytest
import torch
from typer.testing import CliRunner

from conftest import one_error_line
from helpers.trajectories import put_aged, trajectory
from vedit.cache.checkpoints import Checkpoint, CheckpointStore
from vedit.cache.files import MB
from vedit.cache.inversions import InversionCache
from vedit.cli import create_app
from vedit.errors import OutputError


def vedit(*args: str):
    return CliRunner().invoke(create_app(), [str(a) for a in args], catch_exceptions=False, env={"COLUMNS": "250"})


def test_cache_list_shows_the_clip_content_hash_and_markup_literally(tmp_path):
    cache = InversionCache(tmp_path)
    cache.put(
        "ab12" + "0" * 28,
        trajectory(
            source="/clips/[bold]night[/bold].mp4",
            frames_sha256="fedcba9876543210" * 4,
            source_prompt="[red]a cat[/red] [faiss]",
            model="org/[x]-model",
            width="64",
            height="48",
            inversion_steps="4",
            steps="2",
        ),
    )
    result = vedit("cache", "list", "--cache-dir", tmp_path)
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if "ab1200000000" in line)
    for text in (
        "/clips/[bold]night[/bold].mp4",
        "fedcba987654",
        "'[red]a cat[/red] [faiss]'",
        "org/[x]-model",
        "64x48",
        "4/2",
    ):
        assert text in row, row
    assert "ab12000000000" not in row  # keys are shown short, like git
    size = cache.path("ab12" + "0" * 28).stat().st_size
    assert (
        f"1 entries, {size / MB:.1f} MB in {cache.root}; the default cap (--cache-max-gb) is 20 GB (0%)"
        in result.stdout.replace("\n", "")
    )


def test_cache_list_and_clear_on_a_folder_that_cannot_be_read_end_in_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    for command in ("list", "clear", "prune"):
        result = vedit("cache", command, "--cache-dir", tmp_path / "file")
        assert result.exit_code == OutputError.exit_code
        assert "Not a directory" in one_error_line(result)
    missing = vedit("cache", "list", "--cache-dir", tmp_path / "missing")
    assert missing.exit_code == 0 and "no cached inversions in" in missing.stdout


def test_cache_rm_removes_one_entry_by_prefix(tmp_path):
    cache = InversionCache(tmp_path)
    for key in ("ab12" + "0" * 28, "ab34" + "0" * 28):
        cache.put(key, trajectory(source="clip.mp4"))
    size = cache.path("ab12" + "0" * 28).stat().st_size
    result = vedit("cache", "rm", "ab1", "--cache-dir", tmp_path)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"removed cached inversion ab12{'0' * 28} of clip.mp4 ({size / MB:.1f} MB)"
    assert [e.key for e in cache.entries()] == ["ab34" + "0" * 28]


@pytest.mark.parametrize("key, says", [("ab", "is the start of 2 cached inversions"), ("ff", "no cached inversion")])
def test_cache_rm_of_an_unknown_or_ambiguous_key_is_one_line_and_exit_4(tmp_path, key, says):
    cache = InversionCache(tmp_path)
    for full in ("ab12" + "0" * 28, "ab34" + "0" * 28):
        cache.put(full, trajectory())
    result = vedit("cache", "rm", key, "--cache-dir", tmp_path)
    assert result.exit_code == 4
    assert says in one_error_line(result)
    assert len(cache.entries()) == 2


@pytest.mark.parametrize(
    "option, value, expected",
    [
        ("--max-gb", "inf", "--max-gb must be a finite number (0 or more), got inf"),
        ("--max-gb", "nan", "--max-gb must be a finite number (0 or more), got nan"),
        ("--max-gb", "-1", "--max-gb must be 0 or more, got -1"),
        ("--checkpoint-days", "nan", "--checkpoint-days must be a finite number (0 or more), got nan"),
    ],
)
def test_cache_prune_refuses_a_size_or_age_that_is_not_a_finite_number(tmp_path, option, value, expected):
    cache = InversionCache(tmp_path)
    put_aged(cache, "a" * 32, 100)
    result = vedit("cache", "prune", option, value, "--cache-dir", tmp_path)
    assert result.exit_code == 4
    assert one_error_line(result) == f"vedit: error: {expected}"
    assert [e.key for e in cache.entries()] == ["a" * 32]  # nothing removed


def test_cache_prune_keeps_the_most_recently_used(tmp_path):
    cache = InversionCache(tmp_path)
    for age, key in ((100, "a"), (300, "b")):
        put_aged(cache, key * 32, age)
    size = cache.path("a" * 32).stat().st_size
    result = vedit("cache", "prune", "--max-gb", size / 2**30, "--cache-dir", tmp_path)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"removed 1 cached inversions ({size / MB:.1f} MB); 1 left, {size / MB:.1f} MB",
        "removed 0 checkpoints older than 30 days (0.0 MB); 0 left",
    ]
    assert [e.key[0] for e in cache.entries()] == ["a"]


def test_cache_prune_removes_old_checkpoints_and_keeps_recent_ones(tmp_path):
    store = CheckpointStore(tmp_path)
    day = 86400
    paths = {}
    for key, age_days in (("a", 40), ("b", 10), ("c", 1)):
        latents = torch.zeros(4, 4, 8, 8)
        paths[key] = store.save(
            key * 32, Checkpoint(step=1, steps=8, latents=latents, metadata={"source": f"{key}.mp4"})
        )
        written = time.time() - age_days * day
        os.utime(paths[key], (written, written))
    size = paths["a"].stat().st_size
    runner = CliRunner()
    pruned = runner.invoke(create_app(), ["cache", "prune", "--cache-dir", str(tmp_path)], env={"COLUMNS": "400"})
    assert pruned.exit_code == 0, pruned.output
    # the default keeps 30 days
    assert f"removed 1 checkpoint older than 30 days ({size / 2**20:.1f} MB); 2 left" in pruned.stdout
    assert not paths["a"].exists() and paths["b"].exists() and paths["c"].exists()
    args = ["cache", "prune", "--checkpoint-days", "7", "--cache-dir", str(tmp_path)]
    pruned = runner.invoke(create_app(), args, env={"COLUMNS": "400"})
    assert pruned.exit_code == 0, pruned.output
    assert "removed 1 checkpoint older than 7 days" in pruned.stdout and "1 left" in pruned.stdout
    assert [e.key[0] for e in store.entries()] == ["c"]
    assert store.prune(0) == (1, size) and store.entries() == []
