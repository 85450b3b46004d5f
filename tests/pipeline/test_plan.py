"""The cost plan (vedit.pipeline.plan): what a run will cost, asked of its propagator, and the defaults for a
propagator that does not say. The expected numbers are TokenFlow's formula, written out here."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from vedit import plugins
from vedit.config import RunConfig
from vedit.pipeline.plan import batches_of, branches, pass_batches, planned_forwards
from vedit.pipeline.preview import frames_to_preview

REPO = Path(__file__).resolve().parents[2]


def plugin(kind: str, name: str):
    return plugins.get(kind, name)


@pytest.mark.parametrize("frames, chunk, limit", [(40, 8, 32), (41, 8, 32), (10, 4, 32), (100, 4, 8), (3, 8, 32)])
def test_tokenflow_answers_the_forwards_batches_and_preview_frames_of_its_formula(frames, chunk, limit):
    config = RunConfig(chunk_size=chunk, max_joint_keyframes=limit, batch_size=6, steps=50, inversion_steps=20)
    pnp, tokenflow = plugin("editor", "pnp"), plugin("propagator", "tokenflow")
    steps = 45
    keys = math.ceil(frames / chunk)  # K = ⌈N/B⌉, one keyframe per chunk
    forwards = planned_forwards(config, frames, pnp, tokenflow, steps)
    assert forwards == {"inversion": frames * 20, "keyframe": 3 * keys * steps, "propagation": 3 * frames * steps}
    assert sum(forwards.values()) - frames * 20 == pytest.approx(3 * (1 + keys / frames) * frames * steps)
    assert forwards["keyframes"] == 3 * keys * steps  # the kind's earlier name
    assert planned_forwards(config, frames, pnp, tokenflow, steps, inverting=False).get("inversion") is None

    def lengths(size: int) -> list[int]:  # of the consecutive runs of `size` frames
        return sorted({min(size, frames - start) for start in range(0, frames, size)})

    keyframe = "keyframe" if keys <= limit else "keyframe_bounded"
    assert pass_batches(config, frames, pnp, tokenflow) == {
        "plain": lengths(6),  # the inversion's batches of --batch-size
        keyframe: [3 * keys],
        "propagation": [3 * n for n in lengths(chunk)],
    }
    assert branches(pnp, tokenflow, config) == 1  # only the inversion runs --batch-size frames at a time
    centres = [start + (min(start + chunk, frames) - start) // 2 for start in range(0, frames, chunk)]
    assert frames_to_preview(tokenflow, frames, config) == centres and len(centres) == keys


@pytest.mark.parametrize("editor, pass_name, images", [("pnp", "frames", 3), ("img2img", "plain", 2)])
def test_a_propagator_without_a_plan_of_its_own_gets_one_per_frame_call_per_frame_and_step(editor, pass_name, images):
    """``none`` says nothing of its cost: each frame and step is one call of the per-frame pass, three
    branches with PnP's source branch, two (uncond, cond) without, in batches of --batch-size."""
    config = RunConfig(editor=editor, propagator="none", batch_size=4, steps=50, inversion_steps=20)
    chosen, none = plugin("editor", editor), plugin("propagator", "none")
    assert not any(hasattr(none, m) for m in ("planned_forwards", "pass_batches", "preview_frames"))
    forwards = planned_forwards(config, 10, chosen, none, 50)
    inversion = {"inversion": 10 * 20} if chosen.needs_inversion else {}
    assert forwards == {**inversion, pass_name: images * 10 * 50}
    assert forwards["frames"] == images * 10 * 50  # "frames" is what the per-frame calls were counted as before
    batches = pass_batches(config, 10, chosen, none)
    assert batches[pass_name] == sorted({images * 4, images * 2}) and branches(chosen, none, config) == images
    assert batches_of(10, 4) == [2, 4]
    assert frames_to_preview(none, 20, config) == [4, 12, 18]  # the centre of every 8 frames


def test_the_host_asks_a_third_party_propagator_and_reads_only_its_answers():
    class Mine:
        name = "mine"
        needs_source_branch = True

        def planned_forwards(self, frames, steps_run, options):
            return {"gain": 3 * frames * steps_run}

        def pass_batches(self, frames, batch_size, options):
            return {"gain": [3 * frames]}

        def batch_size_branches(self, branches, options):
            return 5

        def preview_frames(self, total, options):
            return [total - 1, 0]

    config = RunConfig(batch_size=4, inversion_steps=20)
    pnp = plugin("editor", "pnp")
    assert planned_forwards(config, 6, pnp, Mine(), 2) == {"inversion": 6 * 20, "gain": 36}
    assert pass_batches(config, 6, pnp, Mine()) == {"plain": [2, 4], "gain": [18]}
    assert branches(pnp, Mine(), config) == 5 and frames_to_preview(Mine(), 6, config) == [0, 5]


def test_the_host_asks_no_plugin_by_name():
    """``"tokenflow"`` is written in the host's code only as RunConfig's default propagator and in the
    manager's table of the built-in plugin modules it loads."""
    found = [
        (path.relative_to(REPO).as_posix(), line.strip())
        for path in sorted((REPO / "vedit").rglob("*.py"))
        for line in path.read_text().splitlines()
        if '"tokenflow"' in line
    ]
    assert [(path, line.split("(")[0] if path == "vedit/config.py" else line) for path, line in found] == [
        ("vedit/config.py", "propagator: str = setting"),
        ("vedit/plugins/manager.py", '"tokenflow": "vedit_plugins.propagators.tokenflow",'),
    ]
    assert found[0][1].startswith('propagator: str = setting("tokenflow",')
