"""The method against an independent plain implementation (tests/helpers/reference_method.py)."""

from __future__ import annotations

import json

import pytest
import torch

from helpers.method import B, N, T, clean, embeds, plain_unet, run_vedit, sd, trajectory  # noqa: F401  (fixtures, used by name)
from helpers.reference_method import reference_edit, reference_invert
from vedit.method.unet import COND, SOURCE, UNCOND


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def keyframe_schedule(steps: int, seed: int = 7) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    chunks = [range(s, min(s + B, N)) for s in range(0, N, B)]
    return [[c.start + int(torch.randint(len(c), (1,), generator=gen)) for c in chunks] for _ in range(steps)]


def test_inversion_matches_the_reference(sd, clean, embeds, trajectory):
    expected, noisiest = reference_invert(
        sd.unet, sd.new_scheduler(), clean, embeds[SOURCE], inversion_steps=2 * T, sample_steps=T
    )
    assert trajectory.noisiest == noisiest
    assert sorted(trajectory.latents) == sorted(expected)
    for t, latents in expected.items():
        assert relative_error(trajectory.latents[t], latents) < 1e-5, t


@pytest.mark.parametrize("editor, steps_run", [("pnp", T), ("sdedit", round(0.5 * T))])
def test_tokenflow_equals_the_plain_reference(sd, clean, embeds, trajectory, tmp_path, editor, steps_run):
    schedule = keyframe_schedule(steps_run)
    path = tmp_path / "keyframes.json"
    path.write_text(json.dumps({"keyframes": schedule}))
    # pnp_f_t 0.5 / pnp_attn_t 0.34 switch injection off part-way, so both on and off steps are compared.
    ours, _, _ = run_vedit(
        sd,
        clean,
        embeds,
        trajectory,
        tmp_path,
        editor=editor,
        keyframes=str(path),
        pnp_f_t=0.5,
        pnp_attn_t=0.34,
        start=0.5,
    )
    theirs = reference_edit(
        sd.unet,
        sd.new_scheduler(),
        clean_latents=clean,
        trajectory=trajectory.latents,
        noisiest_t=trajectory.noisiest,
        source_embeds=embeds[SOURCE],
        uncond_embeds=embeds[UNCOND],
        cond_embeds=embeds[COND],
        steps=T,
        guidance=7.5,
        editor=editor,
        pnp_f_t=0.5,
        pnp_attn_t=0.34,
        start=0.5,
        chunk_size=B,
        keyframes=schedule,
    )
    assert relative_error(ours, theirs) < 1e-4
    # ...and the edit did something: it is far from the unedited clip.
    assert relative_error(ours, clean) > 0.05
