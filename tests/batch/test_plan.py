"""Planning a batch: errors found before any work, one inversion per clip, the dry run, the folders each worker
resolves, and which outputs are up to date."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from conftest import one_error_line
from helpers.jobs import PROMPTS, RUN, batch_clips, job_file, vedit
from vedit.batch.jobfile import JobFileError
from vedit.batch.plan import SIDECAR_FORMAT, digest_of, model_key, plan_batch, settings_of, sidecar_path
from vedit.config import RunConfig


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """Two 4-frame clips in a folder of their own."""
    return batch_clips(tmp_path_factory.mktemp("batch-clips"))


def test_two_edits_writing_one_output_and_a_bad_plugin_are_errors_before_any_work(tmp_path, clips):
    path = job_file(
        tmp_path / "jobs.toml",
        [
            {"name": "a", "input": str(clips / "*.mp4"), "prompt": "x", "output": "out/{prompt_slug}.mp4"},
            {
                "name": "b",
                "input": str(clips / "pattern.mp4"),
                "prompt": "x",
                "editor": "pnpp",
                "output": "b-{clip}.mp4",
            },
        ],
    )
    with pytest.raises(JobFileError) as caught:
        plan_batch(path)
    first, second = caught.value.errors
    assert first.startswith(f"{path}: job 1 ('a'): output 'out/x.mp4' is also written by the same job (")
    assert "add {clip}, {prompt_slug} or {seed} to the output pattern" in first
    assert second.startswith(f"{path}: job 2 ('b'): pattern.mp4: ") and "pnpp" in second
    assert not (tmp_path / "out").exists() and not (tmp_path / "jobs.summary.json").exists()

    result = vedit("batch", path)  # the command: every error on its own line, exit code 4
    assert result.exit_code == 4
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and all(line.startswith("vedit: error: ") for line in lines)

    path.write_text(
        path.read_text()
        .replace('"pnpp"', '"pnp"')
        .replace('"out/{prompt_slug}.mp4"', '"out/{clip}.mp4"')
        .replace("[run]", "[run]\nstepz = 2")
    )
    line = one_error_line(vedit("batch", path))
    assert line.startswith(f"vedit: error: {path}: [run]: unknown option 'stepz' (did you mean 'steps'?")


def test_dry_run_prints_the_plan_edits_inversions_and_unet_forwards(tmp_path, clips):
    path = job_file(
        tmp_path / "jobs.toml",
        [
            {
                "name": "all",
                "input": str(clips / "*.mp4"),
                "prompts": [*PROMPTS, "snow"],
                "seeds": [1, 2],
                "output": "out/{clip}-{prompt_slug}-{seed}.mp4",
            }
        ],
    )
    plan = plan_batch(path)
    assert len(plan.edits) == 12 and len(plan.groups) == 2  # one per clip: the seeds share the tiny model
    assert all(len(g.edits) == 6 for g in plan.groups)
    # per edit: 4 frames, 1 step, chunk 4: 3 keyframe forwards (one keyframe × 3 branches) + 12 propagation
    assert all(e.forwards == {"keyframe": 3, "propagation": 12} for e in plan.edits)
    assert all(e.forwards["keyframes"] == 3 for e in plan.edits)  # the kind's earlier name still reads it
    assert plan.planned_forwards() == {"inversion": 2 * 4, "keyframe": 36, "propagation": 144}
    result = vedit("batch", path, "--dry-run", cwd=tmp_path)
    assert result.exit_code == 0, result.output
    assert "out/pattern-snow-2.mp4" in result.stdout
    assert (
        "12 edits: 12 to run, 0 up to date, 0 failing; 2 inversions of 2 clips to compute (one already in the cache "
        "costs none); UNet image-forwards 188 (inversion 8, keyframe 36, propagation 144)"
    ) in result.stdout
    assert not (tmp_path / "out").exists() and not (tmp_path / "jobs.summary.json").exists()


def test_a_plan_keeps_built_engines_in_the_cache_folder_unless_a_job_names_an_engine_cache(
    tmp_path, clips, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "jobs").mkdir()
    clip = str(clips / "pattern.mp4")
    path = job_file(
        tmp_path / "jobs" / "jobs.toml",
        [
            {"name": "default", "input": clip, "prompts": ["x"], "output": "out/default.mp4"},
            {"name": "named", "input": clip, "prompts": ["x"], "output": "out/named.mp4", "engine-cache": "built"},
        ],
        run={**RUN, "cache-dir": "shared"},
    )
    configs = {edit.job_name: edit.config for edit in plan_batch(path).edits}
    # Every worker resolves the same folders: the cache folder made absolute (written in the job file: relative to
    # its folder), and the engines in it unless a folder is named.
    assert configs["default"].cache_dir == str(tmp_path / "jobs" / "shared")
    assert configs["default"].engine_cache is None
    assert configs["named"].engine_cache == str(tmp_path / "jobs" / "built")


def test_outputs_made_when_the_seed_drew_the_weights_are_redone_only_where_they_change(tmp_path, clips):
    path = job_file(
        tmp_path / "jobs.toml",
        [{"input": str(clips / "pattern.mp4"), "prompt": "x", "seeds": [0, 2], "output": "out/{seed}.mp4"}],
    )
    (tmp_path / "out").mkdir()
    for edit in plan_batch(path).edits:  # records as written when tiny's weights came from the edit's seed
        before = {k: v for k, v in edit.settings.items() if k != "model_seed"}
        edit.output.write_bytes(b"an earlier output")
        sidecar_path(edit.output).write_text(json.dumps({"format": SIDECAR_FORMAT, "digest": digest_of(before)}))
    # seed 0 drew tiny@0 then and now; seed 2 drew tiny@2 then and tiny@0 now
    assert [(e.output.name, e.status) for e in plan_batch(path).edits] == [("0.mp4", "skipped"), ("2.mp4", "todo")]
    clip = clips / "pattern.mp4"
    then = {k: v for k, v in settings_of(RunConfig(model="tiny", seed=2), clip).items() if k != "model_seed"}
    assert digest_of(settings_of(RunConfig(model="tiny@2", seed=2), clip)) == digest_of(then)  # what seed 2 made then


def test_a_single_file_model_written_in_a_job_file_is_found_from_its_folder(tmp_path, clips, monkeypatch):
    from helpers.single_file import write_checkpoint
    from vedit.batch.plan import model_key
    from vedit.model.loading import load_model

    tiny = load_model("tiny", device="cpu")
    (tmp_path / "jobs").mkdir()
    tiny.save_pretrained(tmp_path / "jobs" / "config")
    tiny.scheduler.save_pretrained(tmp_path / "jobs" / "schedule" / "scheduler")
    write_checkpoint(tiny, tmp_path / "jobs" / "tiny.safetensors")
    monkeypatch.chdir(tmp_path)  # another folder than the job file's
    clip = str(clips / "pattern.mp4")
    checkpoint = {"model": "tiny.safetensors", "model-config": "config"}
    path = job_file(
        tmp_path / "jobs" / "jobs.toml",
        [
            {"name": "file", "input": clip, "prompts": ["x"], "output": "out/file.mp4", **checkpoint},
            {"name": "other-config", "input": clip, "prompts": ["x"], "output": "out/b.mp4", **checkpoint,
             "model-config": str(tmp_path / "jobs" / "schedule")},
        ],
    )  # fmt: skip
    configs = {edit.job_name: edit.config for edit in plan_batch(path).edits}
    assert configs["file"].model == str(tmp_path / "jobs" / "tiny.safetensors")
    assert configs["file"].model_config == str(tmp_path / "jobs" / "config")
    # the same file under other configs is another model: the workers do not share one loaded model between them
    assert model_key(configs["file"]) != model_key(configs["other-config"])


def test_a_loras_scale_or_content_changes_the_digest_and_the_shared_model_and_no_lora_leaves_it_as_it_was(
    tmp_path, clips
):
    from safetensors.torch import save_file

    (tmp_path / "loras").mkdir()
    lora = tmp_path / "loras" / "style.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(1, 2), "lora_unet_x.lora_up.weight": torch.zeros(2, 1)},
              lora)  # fmt: skip
    job = {"input": str(clips / "pattern.mp4"), "prompt": "x", "output": "out.mp4"}

    def planned(lora_value: list[str]):
        (edit,) = plan_batch(job_file(tmp_path / "jobs.toml", [{**job, "lora": lora_value}])).edits
        return edit

    edit = planned(["loras/style.safetensors:0.8"])
    assert edit.config.lora == (f"{lora}:0.8",)  # relative to the job file
    assert edit.digest != planned(["loras/style.safetensors:0.5"]).digest
    assert model_key(edit.config) != model_key(edit.config.replace(lora=()))  # no model shared with the base one
    before = edit.digest
    save_file({"lora_unet_x.lora_down.weight": torch.ones(1, 2), "lora_unet_x.lora_up.weight": torch.ones(2, 1)}, lora)
    os.utime(lora, ns=(lora.stat().st_atime_ns, lora.stat().st_mtime_ns + 1_000_000))  # however fast the rewrite
    assert planned(["loras/style.safetensors:0.8"]).digest != before
    # without LoRAs the settings are what they were before the option existed
    assert "lora" not in settings_of(RunConfig(model="tiny"), clips / "pattern.mp4")
