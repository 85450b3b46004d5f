"""``vedit batch`` end to end: running a plan in this process, in a local pool of worker processes and on a local
Ray cluster, with a worker killed mid-job; outputs refused or replaced, failures, sharing an inversion without the
cache."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from conftest import make_clip, one_error_line
from helpers.jobs import PROMPTS, RUN, batch_clips, job_file, vedit
from helpers.kill_once import KillOnceWhileWriting
from vedit.batch.plan import SIDECAR_FORMAT, OutputsRefused, plan_batch, prompt_slug, read_sidecar, sidecar_path
from vedit.batch.run import FAILED_EXIT_CODE, run_batch
from vedit.batch.workers import Unit, execute
from vedit.io.files import written_by_vedit

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """Two 4-frame clips in a folder of their own."""
    return batch_clips(tmp_path_factory.mktemp("batch-clips"))


@pytest.fixture(scope="module")
def alone(clips, tmp_path_factory) -> dict[tuple[str, str], bytes]:
    """Every (clip, prompt) edited alone, as `vedit run` would: its own model, its own inversion."""
    from vedit.pipeline.edit import edit

    folder = tmp_path_factory.mktemp("alone")
    options = {k.replace("-", "_"): v for k, v in RUN.items()}
    outputs = {}
    for clip in ("pattern", "fractal"):
        for prompt in PROMPTS:
            out = folder / f"{clip}-{prompt_slug(prompt)}.mp4"
            result = edit(
                clips / f"{clip}.mp4", out, prompt=prompt, cache_dir=str(folder / f"cache-{out.stem}"), **options
            )
            assert result.inversion == "computed"
            outputs[(clip, prompt)] = out.read_bytes()
    return outputs


def two_by_two(tmp_path: Path, clips: Path, name: str = "jobs.toml", **job) -> Path:
    return job_file(tmp_path / name, [{"name": "all", "input": str(clips / "*.mp4"), "prompts": PROMPTS,
                                       "output": "out/{clip}-{prompt_slug}.mp4", **job}])  # fmt: skip


def summary(path: Path) -> dict:
    return json.loads(path.read_text())


def computed_per_clip(doc: dict) -> dict[str, int]:
    """How many times each clip was inverted: by its group's own unit or by an edit for itself."""
    counts: dict[str, int] = {}
    for group in doc["inversions"]:
        counts.setdefault(Path(group["input"]).stem, 0)
        counts[Path(group["input"]).stem] += group["status"] == "computed"
    for edit in doc["edits"]:
        counts[Path(edit["input"]).stem] += edit["inversion"] == "computed"
    return counts


def assert_same_as_alone(doc: dict, alone: dict) -> None:
    for edit in doc["edits"]:
        assert edit["status"] in ("done", "skipped"), edit
        key = (Path(edit["input"]).stem, edit["prompt"])
        assert Path(edit["output"]).read_bytes() == alone[key], f"{edit['output']} differs from the edit run alone"


# ---------------------------------------------------------------------------------------------
# In this process


def test_batch_in_this_process_matches_edits_run_alone_inverts_each_clip_once_and_reruns_nothing(
    tmp_path, clips, alone
):
    path = two_by_two(tmp_path, clips)
    result = vedit("batch", path, cwd=tmp_path)
    assert result.exit_code == 0, result.output
    doc = summary(tmp_path / "jobs.summary.json")
    assert doc["backend"] == "serial" and doc["model_loads"] == 1 and doc["finished"]
    assert doc["counts"] == {"edits": 4, "done": 4}
    assert computed_per_clip(doc) == {"pattern": 1, "fractal": 1}
    assert all(e["inversion"] == "cached" for e in doc["edits"])  # each shares its clip's inversion
    assert_same_as_alone(doc, alone)
    for edit in doc["edits"]:
        record = json.loads(sidecar_path(edit["output"]).read_text())
        assert record["digest"] == edit["digest"] and record["settings"]["prompt"] == edit["prompt"]
    assert "4 done, 0 up to date, 0 failed" in result.stdout

    mark = time.perf_counter()
    again = vedit("batch", path, cwd=tmp_path)  # the same file again: nothing to do
    assert again.exit_code == 0 and time.perf_counter() - mark < 10
    doc = summary(tmp_path / "jobs.summary.json")
    assert doc["counts"] == {"edits": 4, "skipped": 4} and doc["model_loads"] == 0 and doc["inversions_computed"] == 0

    # Only what changed is done again: a new prompt, a clip touched, an output deleted.
    path.write_text(path.read_text().replace('"an oil painting"]', '"an oil painting", "snow"]'))
    os.utime(clips / "fractal.mp4")
    (tmp_path / "out" / "pattern-a-watercolor-painting.mp4").unlink()
    plan = plan_batch(path)
    todo = sorted(e.output.name for e in plan.todo)
    assert todo == ["fractal-a-watercolor-painting.mp4", "fractal-an-oil-painting.mp4", "fractal-snow.mp4",
                    "pattern-a-watercolor-painting.mp4", "pattern-snow.mp4"]  # fmt: skip
    assert plan_batch(path, force=True).todo == plan_batch(path, force=True).edits


def test_two_seeds_of_one_built_model_invert_each_clip_once_and_other_weights_are_their_own_group(tmp_path, clips):
    from vedit.pipeline.edit import edit

    path = job_file(tmp_path / "jobs.toml", [
        {"input": str(clips / "pattern.mp4"), "prompt": "x", "seeds": [1, 2], "output": "out/{seed}.mp4"},
        {"input": str(clips / "pattern.mp4"), "prompt": "x", "model": "tiny@1", "output": "out/weights-1.mp4"},
    ])  # fmt: skip
    plan = plan_batch(path)
    assert [[e.output.name for e in g.edits] for g in plan.groups] == [["1.mp4", "2.mp4"], ["weights-1.mp4"]]
    run_batch(plan, summary=tmp_path / "s.json")
    doc = summary(tmp_path / "s.json")
    assert doc["counts"] == {"edits": 3, "done": 3} and doc["model_loads"] == 2
    assert doc["inversions_computed"] == 2  # one for tiny's two seeds, one for tiny@1
    assert [e["inversion"] for e in doc["edits"]] == ["cached", "cached", "computed"]
    options = {k.replace("-", "_"): v for k, v in RUN.items()}
    alone = edit(clips / "pattern.mp4", tmp_path / "alone.mp4", prompt="x", seed=2, cache_dir=str(tmp_path / "c"),
                 **options)  # fmt: skip
    assert alone.model == "tiny (tiny:seed0)"
    assert (tmp_path / "alone.mp4").read_bytes() == (tmp_path / "out" / "2.mp4").read_bytes()


def test_an_output_vedit_did_not_write_is_refused_in_the_plan_and_replaced_only_with_overwrite(tmp_path, clips):
    (tmp_path / "out").mkdir()
    theirs = make_clip(tmp_path / "out" / "pattern.mp4", frames=3, source="mandelbrot")
    before = theirs.read_bytes()
    path = job_file(tmp_path / "jobs.toml", [{"name": "p", "input": str(clips / "*.mp4"), "prompt": "x",
                                              "output": "out/{clip}.mp4"}])  # fmt: skip
    refusal = f"{theirs} exists and was not written by vedit; pass --overwrite to replace it"
    plan = plan_batch(path)
    assert [(e.output.name, e.status, e.reason) for e in plan.edits] == [
        ("fractal.mp4", "todo", ""), ("pattern.mp4", "refused", refusal)]  # fmt: skip
    with pytest.raises(OutputsRefused) as caught:  # the Python API runs nothing either
        run_batch(plan)
    assert caught.value.errors == [f"{path}: job 1 ('p'): {refusal}"] and caught.value.exit_code == 3

    dry = vedit("batch", path, "--dry-run", cwd=tmp_path)
    assert dry.exit_code == 0, dry.output
    text = " ".join(dry.stdout.split())
    assert "refuse: " in text and "2 edits: 1 to run, 0 up to date, 0 failing, 1 refused" in text
    result = vedit("batch", path, cwd=tmp_path)
    assert result.exit_code == 3 and one_error_line(result) == f"vedit: error: {path}: job 1 ('p'): {refusal}"
    assert theirs.read_bytes() == before and not (tmp_path / "out" / "fractal.mp4").exists()
    assert not (tmp_path / "jobs.summary.json").exists()

    dry = vedit("batch", path, "--dry-run", "--overwrite", cwd=tmp_path)
    text = " ".join(dry.stdout.split())
    assert "run, replacing a file vedit did not write" in text
    assert "2 to run, 0 up to date, 0 failing, 1 replacing" in text
    result = vedit("batch", path, "--overwrite", cwd=tmp_path)
    assert result.exit_code == 0, result.output
    assert theirs.read_bytes() != before
    assert summary(tmp_path / "jobs.summary.json")["counts"] == {"edits": 2, "done": 2}
    again = vedit("batch", path, "--force", cwd=tmp_path)  # vedit's own outputs now: no flag needed
    assert again.exit_code == 0 and summary(tmp_path / "jobs.summary.json")["counts"] == {"edits": 2, "done": 2}


def test_overwrite_in_a_job_and_records_of_unsigned_outputs(tmp_path, clips):
    (tmp_path / "out").mkdir()
    theirs = make_clip(tmp_path / "out" / "theirs.mp4", frames=3, source="mandelbrot")
    old = make_clip(tmp_path / "out" / "old.mp4", frames=3)  # as a batch wrote it before outputs were signed
    sidecar_path(old).write_text(json.dumps({"format": SIDECAR_FORMAT, "digest": "an older digest"}))
    path = job_file(tmp_path / "jobs.toml", [
        {"input": str(clips / "pattern.mp4"), "prompt": "x", "output": "out/theirs.mp4", "overwrite": True},
        {"input": str(clips / "pattern.mp4"), "prompt": "x", "output": "out/old.mp4"},
    ])  # fmt: skip
    plan = plan_batch(path)
    assert [(e.status, e.replaces) for e in plan.edits] == [("todo", True), ("todo", False)]
    run_batch(plan)
    assert [e.status for e in plan.edits] == ["done", "done"]
    assert written_by_vedit(theirs) and written_by_vedit(old) and read_sidecar(old)["digest"] == plan.edits[1].digest


def test_failing_edits_are_reported_once_and_do_not_stop_the_others(tmp_path, clips):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    path = job_file(tmp_path / "jobs.toml", [
        {"name": "bad clip", "input": str(broken), "prompt": "x", "output": "out/{clip}.mp4"},  # found while planning
        {"name": "no model", "input": str(clips / "pattern.mp4"), "prompt": "x", "model": "/nonexistent/sd-folder",
         "output": "out/nomodel.mp4"},  # found when it runs
        {"name": "good", "input": str(clips / "pattern.mp4"), "prompt": "x", "output": "out/{clip}.mp4"},
    ])  # fmt: skip
    result = vedit("batch", path, "--summary", tmp_path / "s" / "result.json", cwd=tmp_path)
    assert result.exit_code == FAILED_EXIT_CODE
    errors = [line for line in result.stderr.splitlines() if line.startswith("vedit: error:")]
    assert errors == [f"vedit: error: 2 of 3 edits failed (see {tmp_path / 's' / 'result.json'})"]
    doc = summary(tmp_path / "s" / "result.json")
    bad, nomodel, good = doc["edits"]
    assert bad["status"] == "failed" and "broken.mp4" in bad["reason"] and not Path(bad["output"]).exists()
    assert nomodel["status"] == "failed" and nomodel["reason"].startswith(
        "model folder '/nonexistent/sd-folder' does not exist"
    )
    assert nomodel["attempts"] == 1 and not Path(nomodel["output"]).exists()  # a failure is not retried
    assert good["status"] == "done" and Path(good["output"]).is_file()
    assert result.stdout.count("failed: ") == 2  # the table says why
    for name in ("broken.mp4", "/nonexistent/sd-folder"):  # and stderr says it once
        assert sum(name in line for line in result.stderr.splitlines()) == 1, result.stderr


def test_without_the_cache_a_clip_is_still_inverted_once_and_shared_through_a_file(tmp_path, clips, alone):
    path = job_file(tmp_path / "jobs.toml", [{"input": str(clips / "pattern.mp4"), "prompts": PROMPTS, "no-cache": True,
                                              "output": "out/{clip}-{prompt_slug}.mp4"}])  # fmt: skip
    run_batch(plan_batch(path), summary=tmp_path / "s.json")
    doc = summary(tmp_path / "s.json")
    assert computed_per_clip(doc) == {"pattern": 1} and doc["inversions"][0]["shared_as"] == "file"
    assert [e["inversion"] for e in doc["edits"]] == ["file", "file"]
    assert_same_as_alone(doc, alone)
    assert not (tmp_path / "cache" / "inversions").exists() or not any((tmp_path / "cache" / "inversions").iterdir())


def test_an_edit_that_cannot_see_the_inversion_fetches_it_once_and_does_not_invert_again(tmp_path, clips):
    """What a Ray worker on a machine that does not share the cache folder does: the trajectory's
    bytes come from the object store and go into this machine's cache under the same key."""
    path = job_file(tmp_path / "jobs.toml", [{"input": str(clips / "pattern.mp4"), "prompts": PROMPTS,
                                              "output": "out/{clip}-{prompt_slug}.mp4"}])  # fmt: skip
    plan = plan_batch(path)
    group, edit = plan.groups[0], plan.edits[0]
    inverted = execute(Unit("invert", group.number, group.input, group.config.replace(prompt=None)))
    assert inverted.status == "done" and inverted.inversion == "computed"
    where = Path(inverted.trajectory["path"])
    data = where.read_bytes()
    where.unlink()  # not on this machine
    fetched = []
    unit = Unit("edit", edit.index, edit.input, edit.config, edit.output, edit.digest, edit.settings,
                trajectory=inverted.trajectory)  # fmt: skip
    outcome = execute(unit, fetch=lambda: fetched.append(1) or data)
    assert outcome.status == "done", outcome.reason
    assert fetched == [1] and outcome.inversion == "cached" and where.read_bytes() == data


# ---------------------------------------------------------------------------------------------
# A local pool of worker processes (the multi-GPU path, run here with CPU workers)


def test_local_pool_of_two_workers_survives_a_killed_worker(tmp_path, clips, alone):
    path = two_by_two(tmp_path, clips)
    marker = tmp_path / "killed-once"
    result = run_batch(plan_batch(path), workers=2, summary=tmp_path / "s.json",
                       worker_reporter=KillOnceWhileWriting(marker, "fractal-an-oil"))  # fmt: skip
    doc = summary(tmp_path / "s.json")
    assert marker.exists(), "the worker writing fractal-an-oil-painting.mp4 was to kill itself once"
    assert result.backend == "pool" and result.workers == 2 and not result.failed
    killed = next(e for e in doc["edits"] if "fractal-an-oil" in e["output"])
    assert killed["attempts"] == 2 and killed["status"] == "done"
    assert computed_per_clip(doc) == {"pattern": 1, "fractal": 1}
    assert_same_as_alone(doc, alone)
    assert not list((tmp_path / "out").glob(".*partial*")), "a killed attempt's temporary file was left behind"


# ---------------------------------------------------------------------------------------------
# Ray: a local cluster of two CPU workers, started once for these tests


@pytest.fixture(scope="module")
def ray_cluster():
    import signal

    ray = pytest.importorskip("ray")
    environ, on_term = dict(os.environ), signal.getsignal(signal.SIGTERM)
    if ray.is_initialized():
        ray.shutdown()
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # CI has no network beyond the package registries
    # The actors are processes of the cluster's: they import the tests' worker reporter (helpers/kill_once.py) as
    # `helpers.kill_once`, so tests/ goes on their Python path.
    tests = Path(__file__).resolve().parents[1]
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tests), os.environ.get("PYTHONPATH")]))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()
    os.environ.clear()  # ray.init sets a few variables and a SIGTERM handler: later tests get neither
    os.environ.update(environ)
    signal.signal(signal.SIGTERM, on_term)


def test_ray_batch_matches_edits_run_alone_inverts_each_clip_once_and_reruns_nothing(
    tmp_path, clips, alone, ray_cluster
):
    path = two_by_two(tmp_path, clips)
    result = vedit("batch", path, "--ray", "auto", "--workers", "2", cwd=tmp_path)
    assert result.exit_code == 0, result.output
    assert "on Ray, 2 workers (one CPU each)" in result.stderr
    doc = summary(tmp_path / "jobs.summary.json")
    assert doc["backend"] == "ray" and doc["counts"] == {"edits": 4, "done": 4}
    assert computed_per_clip(doc) == {"pattern": 1, "fractal": 1}
    assert all(e["inversion"] == "cached" for e in doc["edits"])
    assert_same_as_alone(doc, alone)
    assert (
        len({e["worker"] for e in doc["edits"]} | {g["worker"] for g in doc["inversions"]}) >= 2
    )  # both workers worked

    again = vedit("batch", path, "--ray", "auto", "--workers", "2", cwd=tmp_path)
    assert again.exit_code == 0
    doc = summary(tmp_path / "jobs.summary.json")
    assert doc["counts"] == {"edits": 4, "skipped": 4} and doc["model_loads"] == 0 and doc["inversions_computed"] == 0


def test_ray_batch_completes_when_a_worker_is_killed_mid_job(tmp_path, clips, alone, ray_cluster):
    path = job_file(tmp_path / "jobs.toml", [{"input": str(clips / "pattern.mp4"), "prompts": PROMPTS,
                                              "output": "out/{clip}-{prompt_slug}.mp4"}])  # fmt: skip
    marker = tmp_path / "killed-once"
    result = run_batch(plan_batch(path, device_here=False), ray="auto", workers=2, summary=tmp_path / "s.json",
                       worker_reporter=KillOnceWhileWriting(marker, "pattern-a-watercolor"))  # fmt: skip
    assert marker.exists(), "the Ray worker writing pattern-a-watercolor-painting.mp4 was to kill itself once"
    assert not result.failed
    doc = summary(tmp_path / "s.json")
    assert doc["counts"] == {"edits": 2, "done": 2}
    killed = next(e for e in doc["edits"] if "pattern-a-watercolor" in e["output"])
    assert killed["attempts"] == 2 and "died" not in killed["reason"]
    assert computed_per_clip(doc) == {"pattern": 1}
    assert_same_as_alone(doc, alone)
    assert not list((tmp_path / "out").glob(".*partial*"))


def test_a_job_with_a_lora_edits_with_it_as_vedit_run_does(clips, tmp_path):
    from helpers.adapters import kohya_lora
    from vedit.model.loading import load_model
    from vedit.pipeline.edit import edit

    kohya_lora(load_model("tiny", device="cpu", dtype="fp32"), tmp_path / "style.safetensors")
    path = job_file(
        tmp_path / "jobs.toml",
        [
            {
                "input": str(clips / "pattern.mp4"),
                "prompt": PROMPTS[0],
                "output": "out.mp4",
                "lora": ["style.safetensors:0.8"],
            }
        ],
    )
    result = vedit("batch", path)
    assert result.exit_code == 0, result.output  # the model a worker holds was loaded with the job's LoRA
    options = {k.replace("-", "_"): v for k, v in RUN.items()}
    alone = edit(
        clips / "pattern.mp4",
        tmp_path / "alone.mp4",
        prompt=PROMPTS[0],
        lora=[f"{tmp_path / 'style.safetensors'}:0.8"],
        **options,
    )
    assert "+lora:" in alone.model
    assert (tmp_path / "out.mp4").read_bytes() == (tmp_path / "alone.mp4").read_bytes()
