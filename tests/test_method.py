"""The method against an independent plain implementation (tests/reference_method.py), and its
consistency and work figures."""

from __future__ import annotations

import json

import pytest
import torch

from reference_method import reference_edit, reference_invert
from vedit import plugins
from vedit.method.attention import PlainAttention
from vedit.config import RunConfig
from vedit.method.denoise import EditJob, denoise
from vedit.method.ddim import invert
from vedit.method.trajectory import Trajectory
from vedit.model.loading import load_model
from vedit.runtime.runner import Passes
from vedit.method.passes import PropagatedAttention
from vedit.method.unet import COND, SOURCE, UNCOND, CallContext, ControlledUNet, Injection
from vedit_plugins.propagators.tokenflow import blend_weights

N, B, T = 11, 4, 6  # 11 frames: chunks of 4, 4 and 3


@pytest.fixture(scope="module")
def sd():
    return load_model("tiny@3", device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def clean(sd):
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(1, 4, 8, 8, generator=gen)
    drift = torch.randn(N, 4, 8, 8, generator=gen)
    return base + 0.3 * drift  # frames that resemble each other, like a video's


@pytest.fixture(scope="module")
def embeds(sd):
    return dict(zip((SOURCE, UNCOND, COND), sd.encode_prompt(["a photo of a cat", "", "a watercolor of a dog"]).split(1)))


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def plain_unet(sd):
    def run(x, t, text):
        return sd.unet(x, t, encoder_hidden_states=text, return_dict=False)[0]

    return run


@pytest.fixture(scope="module")
def trajectory(sd, clean, embeds):
    return invert(plain_unet(sd), sd.new_scheduler(), clean, embeds[SOURCE], inversion_steps=2 * T, steps=T, batch_size=4)


def test_inversion_matches_the_reference(sd, clean, embeds, trajectory):
    expected, noisiest = reference_invert(
        sd.unet, sd.new_scheduler(), clean, embeds[SOURCE], inversion_steps=2 * T, sample_steps=T
    )
    assert trajectory.noisiest == noisiest
    assert sorted(trajectory.latents) == sorted(expected)
    for t, latents in expected.items():
        assert relative_error(trajectory.latents[t], latents) < 1e-5, t


def keyframe_schedule(steps: int, seed: int = 7) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    chunks = [range(s, min(s + B, N)) for s in range(0, N, B)]
    return [[c.start + int(torch.randint(len(c), (1,), generator=gen)) for c in chunks] for _ in range(steps)]


def run_vedit(sd, clean, embeds, trajectory, tmp_path, **options):
    config = RunConfig(prompt="x", steps=T, chunk_size=B, guidance=7.5, **options)
    scheduler = sd.new_scheduler()
    scheduler.set_timesteps(config.steps)
    job = EditJob(config=config, model=sd, scheduler=scheduler, clean_latents=clean, trajectory=trajectory,
                  generator=torch.Generator().manual_seed(0))
    plan = plugins.get("editor", config.editor).plan(job)
    propagator = plugins.get("propagator", config.propagator)
    eager = [plugins.get("engine", "eager")]
    with Passes(sd, eager, conv_layers=plan.conv_layers, qk_layers=plan.qk_layers) as passes:
        latents = denoise(job, plan, propagator, passes, embeds)
    return latents, passes.forwards, plan


@pytest.mark.parametrize("editor, steps_run", [("pnp", T), ("sdedit", round(0.5 * T))])
def test_tokenflow_equals_the_plain_reference(sd, clean, embeds, trajectory, tmp_path, editor, steps_run):
    schedule = keyframe_schedule(steps_run)
    path = tmp_path / "keyframes.json"
    path.write_text(json.dumps({"keyframes": schedule}))
    # pnp_f_t 0.5 / pnp_attn_t 0.34 switch injection off part-way, so both on and off steps are compared.
    ours, _, _ = run_vedit(sd, clean, embeds, trajectory, tmp_path, editor=editor, keyframes=str(path),
                           pnp_f_t=0.5, pnp_attn_t=0.34, start=0.5)
    theirs = reference_edit(
        sd.unet, sd.new_scheduler(), clean_latents=clean, trajectory=trajectory.latents,
        noisiest_t=trajectory.noisiest, source_embeds=embeds[SOURCE], uncond_embeds=embeds[UNCOND],
        cond_embeds=embeds[COND], steps=T, guidance=7.5, editor=editor, pnp_f_t=0.5, pnp_attn_t=0.34,
        start=0.5, chunk_size=B, keyframes=schedule,
    )
    assert relative_error(ours, theirs) < 1e-4
    # ...and the edit did something: it is far from the unedited clip.
    assert relative_error(ours, clean) > 0.05


def test_same_seed_same_keyframes_different_seed_different(sd, clean, embeds, trajectory, tmp_path):
    a, _, _ = run_vedit(sd, clean, embeds, trajectory, tmp_path, seed=1)
    b, _, _ = run_vedit(sd, clean, embeds, trajectory, tmp_path, seed=1)
    c, _, _ = run_vedit(sd, clean, embeds, trajectory, tmp_path, seed=2)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_tokenflow_work_is_three_times_one_plus_one_over_b(sd, clean, embeds, trajectory, tmp_path):
    _, forwards, plan = run_vedit(sd, clean, embeds, trajectory, tmp_path)
    chunks = -(-N // B)
    assert forwards["keyframes"] == 3 * chunks * T
    assert forwards["propagation"] == 3 * N * T
    assert sum(forwards.values()) / (N * T) == pytest.approx(3 * (1 + chunks / N))
    # with B dividing N it is exactly 3(1 + 1/B)
    eight = clean[:8]
    traj8 = Trajectory(clean=eight, latents={t: v[:8] for t, v in trajectory.latents.items()},
                       timesteps=trajectory.timesteps, noisiest=trajectory.noisiest)
    _, forwards8, _ = run_vedit(sd, eight, embeds, traj8, tmp_path)
    assert sum(forwards8.values()) / (8 * T) == pytest.approx(3 * (1 + 1 / B))


def test_inversion_costs_one_forward_per_frame_per_step(sd, clean, embeds):
    calls = []

    def counting(x, t, text):
        calls.append(x.shape[0])
        return plain_unet(sd)(x, t, text)

    invert(counting, sd.new_scheduler(), clean, embeds[SOURCE], inversion_steps=12, steps=T, batch_size=4)
    assert sum(calls) == N * 12


class Capture:
    """Wraps a handler and keeps each layer's self-attention output."""

    def __init__(self, inner):
        self.inner, self.outputs = inner, {}

    def self_attention(self, layer, attn, hidden_states, ctx):
        out = self.inner.self_attention(layer, attn, hidden_states, ctx)
        self.outputs[layer.index] = out
        return out


def test_an_exact_copy_of_the_keyframe_gets_exactly_its_attention_output(sd, embeds):
    gen = torch.Generator().manual_seed(5)
    frames = torch.randn(4, 4, 8, 8, generator=gen)
    frames[2] = frames[0]  # frame 2 is a copy of keyframe 0
    source = torch.randn(4, 4, 8, 8, generator=gen)
    source[2] = source[0]
    t = torch.tensor(501)
    flags = torch.tensor([False, False])
    text = lambda n: torch.cat([embeds[b].expand(n, -1, -1) for b in (SOURCE, UNCOND, COND)])  # noqa: E731
    with Passes(sd, [plugins.get("engine", "eager")]) as passes:
        key = torch.cat([source[:1], frames[:1], frames[:1]])
        _, records = passes.keyframe(key, t, text(1), flags)
        # Chunk 0: its one keyframe in both slots with weight 1, exactly as every chunk runs.
        slots = torch.tensor([0, 0])
        chosen = []
        for f, o in zip(records[0::2], records[1::2]):
            chosen += [f.index_select(0, slots), o.view(3, 1, *o.shape[1:]).index_select(1, slots).reshape(6, *o.shape[1:])]
        capture = Capture(PropagatedAttention(list(zip(chosen[0::2], chosen[1::2])), torch.ones(4)))
        batch = torch.cat([source, frames, frames])
        by_hand = passes.custom(batch, t, text(4), CallContext((SOURCE, UNCOND, COND), 4, capture), kind="propagation")
        assert len(capture.outputs) == len(passes.layers) == 16
        # ...and the propagation pass module gives the same ε as its handler run by hand.
        via_pass = passes.propagate(batch, t, text(4), flags, torch.ones(4), chosen)
    assert torch.equal(via_pass, by_hand)
    for index, out in capture.outputs.items():
        out = out.view(3, 4, *out.shape[1:])
        recorded = records[2 * index + 1].view(3, 1, *out.shape[2:])
        assert torch.equal(out[:, 2], recorded[:, 0]), f"block {index}"
        assert torch.equal(out[:, 0], recorded[:, 0])


def test_plain_handler_reproduces_the_unmodified_unet(sd, embeds):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, 4, 8, 8, generator=gen)
    text = torch.cat([embeds[b].expand(2, -1, -1) for b in (SOURCE, UNCOND, COND)])
    t = torch.tensor(301)
    expected = sd.unet(x, t, encoder_hidden_states=text).sample
    with ControlledUNet(sd.unet, conv_layers=("up_blocks.1.resnets.1",), qk_layers=("up_blocks.2",)) as controlled:
        got = controlled(x, t, text, CallContext((SOURCE, UNCOND, COND), 2, PlainAttention()))
        injected = controlled(x, t, text, CallContext((SOURCE, UNCOND, COND), 2, PlainAttention(), Injection(True, True)))
        as_tensor = controlled(
            x, t, text, CallContext((SOURCE, UNCOND, COND), 2, PlainAttention(), Injection(torch.tensor(True), torch.tensor(True)))
        )
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)
    # injection leaves the source branch alone and changes the others; flags as tensors act the same
    assert torch.allclose(injected[:2], expected[:2], atol=1e-5)
    assert not torch.allclose(injected[2:], expected[2:], atol=1e-3)
    assert torch.allclose(as_tensor, injected, atol=1e-6)
    # uninstalled: the UNet is as it was
    assert torch.equal(sd.unet(x, t, encoder_hidden_states=text).sample, expected)


def test_blend_weights_follow_the_formula():
    w = blend_weights(range(8, 12), 2, 4)  # chunk 2 of B=4: p1 = 10, p2 = 6
    expected = [torch.sigmoid(torch.tensor(abs(s - 6) / (abs(s - 10) + abs(s - 6)))) for s in range(8, 12)]
    assert torch.allclose(w, torch.stack(expected))
    assert w[2] == pytest.approx(torch.sigmoid(torch.tensor(1.0)).item())


def test_blocked_attention_equals_one_fused_call(monkeypatch):
    import torch.nn.functional as F

    from vedit.method import attention

    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 2, 96, 8, generator=gen) for _ in range(3))
    whole = F.scaled_dot_product_attention(q, k, v)
    monkeypatch.setattr(attention, "MAX_SCORES_PER_BLOCK", 2 * 96 * 10)  # blocks of 10 queries
    monkeypatch.setattr(attention, "_fused_kernel", lambda *args: False)  # as where only the math kernel runs
    calls = []
    sdpa = attention.F.scaled_dot_product_attention
    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", lambda *a: calls.append(a) or sdpa(*a))
    assert torch.allclose(attention.attend(q, k, v), whole, atol=1e-6)
    assert len(calls) == 10  # 96 queries in blocks of 10


def test_blocked_nearest_neighbours_equal_one_matmul(monkeypatch):
    from vedit_plugins.nn_backends import torch as torch_nn

    gen = torch.Generator().manual_seed(4)
    queries, keys = torch.randn(300, 16, generator=gen), torch.randn(70, 16, generator=gen)
    expected = (F_normalize(queries) @ F_normalize(keys).T).argmax(-1)
    monkeypatch.setattr(torch_nn, "BLOCK_ELEMENTS", 70 * 7)
    assert torch.equal(torch_nn.cosine_nearest(queries, keys), expected)
    if plugins.registered("nn_backend")["faiss"].unavailable_reason() is None:
        assert torch.equal(plugins.get("nn_backend", "faiss").nearest(queries, keys), expected)


def F_normalize(x):
    return x / x.norm(dim=-1, keepdim=True)
