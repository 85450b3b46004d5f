"""Checks of the plain TokenFlow reference (tests/helpers/reference_method.py) on a tiny random SD UNet.

The reference is the oracle for vedit's optimised implementation, so these tests pin down the
properties that would break if the reference itself were wrong.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from helpers import reference_method as rm

diffusers = pytest.importorskip("diffusers")
from diffusers import DDIMScheduler, UNet2DConditionModel  # noqa: E402
from diffusers.models.attention import BasicTransformerBlock  # noqa: E402

DTYPE = torch.float64


def make_scheduler() -> DDIMScheduler:
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        set_alpha_to_one=False,
        steps_offset=1,
        clip_sample=False,
    )


@pytest.fixture(scope="module", autouse=True)
def one_cpu_thread():
    # The reference makes thousands of tiny kernel calls; on a busy 2-core machine a 2-thread
    # pool turns some of them from microseconds into milliseconds. Restored afterwards.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    model = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(8, 8, 16, 16),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=16,
        attention_head_dim=2,
        norm_num_groups=4,
    )
    return model.eval().to(DTYPE)


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)


def embeds(seed: int) -> torch.Tensor:
    return randn(1, 5, 16, seed=seed)


def plain_unet(unet, latents: torch.Tensor, t: int, emb: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return unet(latents, t, encoder_hidden_states=emb).sample


def transformer_block_names(unet) -> list[str]:
    return [name for name, m in unet.named_modules() if isinstance(m, BasicTransformerBlock)]


def assert_unpatched(unet) -> None:
    for name, module in unet.named_modules():
        assert "forward" not in module.__dict__, f"{name or 'unet'} still carries a patched forward"


# ---------------------------------------------------------------------------------------------
# (1) and (2): the block re-implementation and extended attention
# ---------------------------------------------------------------------------------------------


def test_plain_block_reimplementation_reproduces_the_unpatched_unet(unet):
    latents = randn(3, 4, 8, 8, seed=1)
    emb = torch.cat([embeds(2), embeds(3), embeds(4)])
    expected = plain_unet(unet, latents, 421, emb)
    state = rm.EditState(mode="plain")
    with rm.patched_unet(unet, state), torch.no_grad():
        got = unet(latents, 421, encoder_hidden_states=emb).sample
    assert torch.allclose(got, expected, rtol=0, atol=1e-10)
    assert expected.abs().max() > 0.1  # a real output, not zeros
    assert_unpatched(unet)


def test_plain_block_reimplementation_in_float32(unet):
    unet32 = copy.deepcopy(unet).float()
    latents = randn(2, 4, 8, 8, seed=5).float()
    emb = torch.cat([embeds(6), embeds(7)]).float()
    expected = plain_unet(unet32, latents, 901, emb)
    with rm.patched_unet(unet32, rm.EditState()), torch.no_grad():
        got = unet32(latents, 901, encoder_hidden_states=emb).sample
    assert torch.allclose(got, expected, rtol=0, atol=1e-5)


def test_attend_matches_multi_head_scaled_dot_product_attention(unet):
    attn = unet.up_blocks[2].attentions[0].transformer_blocks[0].attn1
    q, k, v = randn(6, 8, seed=8), randn(10, 8, seed=9), randn(10, 8, seed=10)
    heads, head_dim = attn.heads, 8 // attn.heads
    split = lambda x: x.view(1, -1, heads, head_dim).transpose(1, 2)  # noqa: E731
    expected = F.scaled_dot_product_attention(split(q), split(k), split(v))
    expected = expected.transpose(1, 2).reshape(-1, 8)
    assert torch.allclose(rm.attend(attn, q, k, v), expected, rtol=0, atol=1e-12)


def test_extended_attention_with_one_keyframe_is_ordinary_self_attention(unet):
    # Keyframe pass on [source, uncond, cond] with K = 1 and no injection: every branch's
    # "all keyframes" is its one frame, so the UNet is the plain UNet.
    latents = randn(3, 4, 8, 8, seed=11)
    emb = torch.cat([embeds(12), embeds(13), embeds(14)])
    expected = plain_unet(unet, latents, 601, emb)
    state = rm.EditState(mode="keyframe")
    with rm.patched_unet(unet, state), torch.no_grad():
        got = unet(latents, 601, encoder_hidden_states=emb).sample
    assert torch.allclose(got, expected, rtol=0, atol=1e-10)
    assert set(state.records) == set(transformer_block_names(unet))
    first = state.records["down_blocks.0.attentions.0.transformer_blocks.0"]
    assert first.source_features.shape == (1, 64, 8)  # K x seq x dim
    assert first.attn_out.shape == (3, 64, 8)  # 3K x seq x dim


def _capture_qkv(attn):
    captured = {}
    handles = [
        getattr(attn, name).register_forward_hook(lambda m, i, o, name=name: captured.__setitem__(name, o))
        for name in ("to_q", "to_k", "to_v")
    ]
    return captured, handles


@pytest.mark.parametrize("inject_qk", [False, True])
@pytest.mark.parametrize(
    "block_name",
    [
        "down_blocks.1.attentions.0.transformer_blocks.0",  # never injected
        "up_blocks.1.attentions.1.transformer_blocks.0",  # PnP Q/K target
    ],
)
def test_keyframe_pass_extended_attention_against_sdpa(unet, block_name, inject_qk):
    """Uncond/cond keyframes attend to all K keyframes of their branch; source attends per frame;
    PnP swaps in the source's queries and keys (not values) only in the target blocks."""
    k = 2
    latents = randn(3 * k, 4, 8, 8, seed=15)
    emb = torch.cat([embeds(16)] * k + [embeds(17)] * k + [embeds(18)] * k)
    block = unet.get_submodule(block_name)
    attn = block.attn1
    captured, handles = _capture_qkv(attn)
    state = rm.EditState(mode="keyframe", inject_qk=inject_qk)
    try:
        with rm.patched_unet(unet, state), torch.no_grad():
            unet(latents, 301, encoder_hidden_states=emb)
    finally:
        for h in handles:
            h.remove()
    q, key, v = captured["to_q"], captured["to_k"], captured["to_v"]  # (3K, S, inner)
    targeted = inject_qk and block_name.startswith("up_blocks.1.attentions.1")
    if targeted:
        q = torch.cat([q[:k]] * 3)
        key = torch.cat([key[:k]] * 3)
    heads, inner = attn.heads, q.shape[-1]

    def sdpa(q_, k_, v_):
        split = lambda x: x.reshape(1, -1, heads, inner // heads).transpose(1, 2)  # noqa: E731
        return F.scaled_dot_product_attention(split(q_), split(k_), split(v_)).transpose(1, 2).reshape(-1, inner)

    expected = []
    for branch in range(3):
        rows = range(branch * k, branch * k + k)
        for f in rows:
            if branch == 0:
                expected.append(sdpa(q[f], key[f], v[f]))
            else:
                expected.append(sdpa(q[f], torch.cat([key[r] for r in rows]), torch.cat([v[r] for r in rows])))
    with torch.no_grad():
        expected = attn.to_out[0](torch.stack(expected))
    record = state.records[block_name]
    assert torch.allclose(record.attn_out, expected, rtol=0, atol=1e-12)
    assert state.qk_injections == (8 if inject_qk else 0)  # 8 target blocks, one layer each


# ---------------------------------------------------------------------------------------------
# (3) propagation
# ---------------------------------------------------------------------------------------------


def test_blend_weight_formula():
    # B = 8, chunk 1: p1 = 12, p2 = 4.
    assert rm.blend_weight(12, 1, 8) == pytest.approx(1 / (1 + math.exp(-1.0)))
    assert rm.blend_weight(8, 1, 8) == pytest.approx(1 / (1 + math.exp(-0.5)))
    assert rm.blend_weight(15, 1, 8) == pytest.approx(1 / (1 + math.exp(-11 / 14)))
    # a short last chunk keeps the same formula: B = 4, chunk 2, frame 8 -> p1 = 10, p2 = 6.
    assert rm.blend_weight(8, 2, 4) == pytest.approx(1 / (1 + math.exp(-0.5)))


def test_chunking_keeps_a_short_last_chunk():
    assert rm.chunk_frames(7, 3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert rm.chunk_frames(4, 8) == [[0, 1, 2, 3]]


def test_propagation_gathers_nearest_tokens_and_blends_two_keyframes():
    """Synthetic records: chunk 1's frame is keyframe 1 token-for-token and keyframe 0 reversed."""
    seq, dim, k = 6, 4, 2
    key_features = randn(seq, dim, seed=19)
    record = rm.BlockRecord(
        source_features=torch.stack([key_features.flip(0), 3.0 * key_features]),  # cosine ignores scale
        attn_out=randn(3 * k, seq, dim, seed=20),
    )
    normed = torch.cat([key_features[None], randn(2, seq, dim, seed=21)])  # [source, uncond, cond], n = 1
    state = rm.EditState(mode="propagate", chunk_index=1, chunk_frames=[5], chunk_size=4)
    out = rm._propagated_attention(record, normed, state)
    w1 = rm.blend_weight(5, 1, 4)  # p1 = 6, p2 = 2 -> sigmoid(3/4)
    assert w1 == pytest.approx(1 / (1 + math.exp(-0.75)))
    for branch in range(3):
        expected = w1 * record.attn_out[branch * k + 1] + (1 - w1) * record.attn_out[branch * k + 0].flip(0)
        assert torch.allclose(out[branch], expected, rtol=0, atol=1e-14)


def _two_pass_chunk0(unet, source, x, keyframe, emb3):
    """Keyframe pass on one keyframe, then the propagation pass of chunk 0 holding all frames."""
    n = source.shape[0]
    state = rm.EditState(chunk_size=n)
    src_e, unc_e, cond_e = emb3
    with rm.patched_unet(unet, state), torch.no_grad():
        state.mode = "keyframe"
        batch = torch.cat([source[[keyframe]], x[[keyframe]], x[[keyframe]]])
        unet(batch, 501, encoder_hidden_states=torch.cat([src_e, unc_e, cond_e]))
        state.mode, state.chunk_index, state.chunk_frames = "propagate", 0, list(range(n))
        batch = torch.cat([source, x, x])
        emb = torch.cat([src_e.expand(n, -1, -1), unc_e.expand(n, -1, -1), cond_e.expand(n, -1, -1)])
        unet(batch, 501, encoder_hidden_states=emb)
    return state


def test_copy_of_the_keyframe_gets_exactly_the_keyframe_recorded_output_in_chunk_0(unet):
    source = randn(3, 4, 8, 8, seed=22)
    x = randn(3, 4, 8, 8, seed=23)
    source[1], x[1] = source[0], x[0]  # frame 1 is a copy of keyframe 0; frame 2 is not
    state = _two_pass_chunk0(unet, source, x, 0, (embeds(24), embeds(25), embeds(26)))
    n = 3
    for name, record in state.records.items():
        propagated = state.propagated[name]  # (3n, S, D)
        for branch in range(3):
            recorded = record.attn_out[branch]  # K = 1
            assert torch.allclose(propagated[branch * n + 0], recorded, rtol=0, atol=1e-12), name
            assert torch.allclose(propagated[branch * n + 1], recorded, rtol=0, atol=1e-12), name
            # frame 2 is a pure gather: every token row is one of the keyframe's rows
            rows = propagated[branch * n + 2]
            distance = (rows[:, None, :] - recorded[None, :, :]).abs().amax(dim=-1).amin(dim=-1)  # (S,)
            assert distance.max() == 0, name
    # ... but frame 2 is not simply the keyframe (at 64 tokens its neighbours are not the identity)
    first = "down_blocks.0.attentions.0.transformer_blocks.0"
    assert not torch.allclose(state.propagated[first][2], state.records[first].attn_out[0])


@pytest.fixture(scope="module")
def identical_clip(unet):
    frame = randn(1, 4, 8, 8, seed=27)
    clean = frame.expand(5, -1, -1, -1).clone()
    scheduler = make_scheduler()
    traj, noisiest = rm.reference_invert(unet, scheduler, clean, embeds(28), inversion_steps=4, sample_steps=4)
    return clean, traj, noisiest


@pytest.mark.parametrize("editor", ["pnp", "sdedit"])
def test_identical_frames_stay_identical_through_the_whole_edit(unet, identical_clip, editor):
    clean, traj, noisiest = identical_clip
    steps = 4
    num_run = 4 if editor == "pnp" else round(0.75 * steps)
    keyframes = [[1, 2, 4], [0, 3, 4], [1, 2, 4], [0, 2, 4]][:num_run]  # chunks of 2; last chunk is [4]
    out = rm.reference_edit(
        unet,
        make_scheduler(),
        clean_latents=clean,
        trajectory=traj,
        noisiest_t=noisiest,
        source_embeds=embeds(28),
        uncond_embeds=embeds(29),
        cond_embeds=embeds(30),
        steps=steps,
        editor=editor,
        start=0.75,
        chunk_size=2,
        keyframes=keyframes,
    )
    assert out.shape == clean.shape
    assert (out - out[:1]).abs().max() < 1e-10
    assert (out - clean).abs().max() > 0.1  # the edit did change the latents
    assert_unpatched(unet)


# ---------------------------------------------------------------------------------------------
# (4) inversion and sampling
# ---------------------------------------------------------------------------------------------


class RecordingStubUNet:
    """Stands in for the UNet where only the bookkeeping matters: eps = 0, timesteps recorded."""

    def __init__(self):
        self.calls: list[tuple[int, int]] = []

    def __call__(self, latents, t, encoder_hidden_states):
        self.calls.append((int(t), latents.shape[0]))

        class Out:
            sample = torch.zeros_like(latents)

        return Out()


def test_inversion_walks_upward_and_keeps_the_sampling_schedule_and_the_noisiest():
    stub = RecordingStubUNet()
    clean = randn(5, 4, 2, 2, seed=31)
    traj, noisiest = rm.reference_invert(
        stub, make_scheduler(), clean, embeds(32), inversion_steps=1000, sample_steps=50, batch_size=2
    )
    visited = [t for t, _ in stub.calls[::3]]  # three batches (2, 2, 1) per timestep
    assert visited == list(range(1, 1000))  # ascending; 1000 is not a valid timestep and is dropped
    assert [b for _, b in stub.calls[:3]] == [2, 2, 1]
    assert noisiest == 999
    assert sorted(traj) == list(range(1, 1000, 20)) + [999]
    # With eps = 0 each step rescales by sqrt(a_t / a_t'), so x_t = sqrt(a_t / a_final) * x_0.
    sched = make_scheduler()
    for t in (1, 481, 999):
        scale = (sched.alphas_cumprod[t] / sched.final_alpha_cumprod).double().sqrt()
        assert torch.allclose(traj[t], scale * clean, rtol=1e-6, atol=0)


def test_inversion_rejects_sampling_timesteps_it_does_not_visit():
    with pytest.raises(ValueError, match="not in the inversion schedule"):
        rm.reference_invert(
            RecordingStubUNet(),
            make_scheduler(),
            randn(1, 4, 2, 2, seed=33),
            embeds(34),
            inversion_steps=30,
            sample_steps=50,
        )


def test_ddim_step_matches_the_scheduler():
    scheduler = make_scheduler()
    scheduler.set_timesteps(50)
    x, eps = randn(2, 4, 8, 8, seed=35), randn(2, 4, 8, 8, seed=36)
    for t in (981, 481, 1):
        expected = scheduler.step(eps, t, x, eta=0.0).prev_sample
        assert torch.allclose(rm.ddim_step(scheduler, eps, t, x), expected, rtol=0, atol=1e-12)


def _reconstruction_error(unet, steps: int) -> float:
    scheduler = make_scheduler()
    clean = randn(2, 4, 8, 8, seed=37)
    traj, noisiest = rm.reference_invert(unet, scheduler, clean, embeds(38), inversion_steps=steps, sample_steps=steps)
    recon = rm.reference_sample(unet, scheduler, traj[noisiest], embeds(38), steps=steps)
    return (recon - clean).abs().max().item()


def test_inversion_then_sampling_is_exact_when_eps_does_not_depend_on_the_latent(unet):
    # Zeroing conv_in's weights makes eps a function of (t, prompt) only; DDIM sampling then
    # undoes DDIM inversion exactly, provided both pair the same alphas (incl. the final alpha).
    blind = copy.deepcopy(unet)
    with torch.no_grad():
        blind.conv_in.weight.zero_()
    assert _reconstruction_error(blind, 10) < 1e-10


@pytest.mark.slow
def test_inversion_reconstruction_error_shrinks_like_one_over_steps(unet):
    # A random UNet is no denoiser, so reconstruction is imperfect; with the latent's influence on
    # eps damped, DDIM's first-order error must roughly halve when the step count doubles.
    # Measured: 10 -> 0.43, 20 -> 0.27, 40 -> 0.14, 80 -> 0.065 (clean latents' max |z| is 3.07;
    # the undamped random UNet gives 4.1, 3.1, 1.7).
    damped = copy.deepcopy(unet)
    with torch.no_grad():
        damped.conv_in.weight.mul_(0.005)
    errors = [_reconstruction_error(damped, steps) for steps in (10, 20, 40)]
    assert errors[1] < 0.7 * errors[0]
    assert errors[2] < 0.6 * errors[1]
    assert errors[2] < 0.2


# ---------------------------------------------------------------------------------------------
# (5) the step schedule and the injection windows
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip(unet):
    clean = randn(3, 4, 8, 8, seed=39)
    traj, noisiest = rm.reference_invert(unet, make_scheduler(), clean, embeds(40), inversion_steps=10, sample_steps=10)
    return clean, traj, noisiest


def _edit(unet, clip, **kwargs):
    clean, traj, noisiest = clip
    args = dict(
        clean_latents=clean,
        trajectory=traj,
        noisiest_t=noisiest,
        source_embeds=embeds(40),
        uncond_embeds=embeds(41),
        cond_embeds=embeds(42),
        steps=10,
        chunk_size=2,
    )
    args.update(kwargs)
    return rm.reference_edit(unet, make_scheduler(), **args)


def _count_unet_calls(unet):
    calls = []
    handle = unet.register_forward_pre_hook(lambda m, args: calls.append((int(args[1]), args[0].shape[0])))
    return calls, handle


def _watch_conv_injection(unet):
    """For every conv2 call of the PnP resnet: are uncond and cond's outputs the source's?"""
    seen = []

    def hook(module, inputs, output):
        n = output.shape[0] // 3
        seen.append(torch.equal(output[n : 2 * n], output[:n]) and torch.equal(output[2 * n :], output[:n]))

    handle = unet.get_submodule(rm.CONV_INJECTION_RESNET).conv2.register_forward_hook(hook)
    return seen, handle


def test_sdedit_runs_exactly_the_last_round_start_times_steps(unet, clip):
    num_run = round(0.9 * 10)
    calls, handle = _count_unet_calls(unet)
    seen, conv_handle = _watch_conv_injection(unet)
    trace = []
    try:
        _edit(unet, clip, editor="sdedit", start=0.9, keyframes=[[0, 2]] * num_run, trace=trace)
    finally:
        handle.remove()
        conv_handle.remove()
    schedule = list(range(901, 0, -100))
    assert [s["t"] for s in trace] == schedule[1:]  # 801 ... 1: the last 9 of 10
    # one keyframe pass (3K = 6) and one pass per chunk (3*2, 3*1) per step
    assert calls == [(t, b) for t in schedule[1:] for b in (6, 6, 3)]
    assert not any(s["inject_conv"] or s["inject_qk"] for s in trace)
    assert not any(seen)


def test_pnp_injects_for_the_first_int_T_times_f_steps_on_both_passes(unet, clip):
    seen, conv_handle = _watch_conv_injection(unet)
    trace = []
    try:
        _edit(unet, clip, editor="pnp", pnp_f_t=0.75, pnp_attn_t=0.5, keyframes=[[1, 2]] * 10, trace=trace)
    finally:
        conv_handle.remove()
    assert [s["t"] for s in trace] == list(range(901, 0, -100))
    assert [s["inject_conv"] for s in trace] == [True] * 7 + [False] * 3  # int(10 * 0.75) = 7
    assert [s["inject_qk"] for s in trace] == [True] * 5 + [False] * 5
    # 3 UNet calls per step (keyframe pass, two chunks), each through the PnP resnet once
    assert seen == [True] * (7 * 3) + [False] * (3 * 3)


@pytest.mark.slow
def test_pnp_without_injection_equals_sdedit_from_the_first_timestep(unet, clip):
    keyframes = [[0, 2], [1, 2]] * 5
    pnp = _edit(unet, clip, editor="pnp", pnp_f_t=0.0, pnp_attn_t=0.0, keyframes=keyframes)
    sdedit = _edit(unet, clip, editor="sdedit", start=1.0, keyframes=keyframes)
    injected = _edit(unet, clip, editor="pnp", keyframes=keyframes)
    assert torch.equal(pnp, sdedit)
    assert (injected - pnp).abs().max() > 1e-3


def test_keyframe_schedule_is_validated(unet, clip):
    with pytest.raises(ValueError, match="not inside its chunk"):
        _edit(unet, clip, editor="pnp", keyframes=[[2, 2]] * 10)
    with pytest.raises(ValueError, match="steps"):
        _edit(unet, clip, editor="sdedit", keyframes=[[0, 2]] * 10)


# ---------------------------------------------------------------------------------------------
# (6) the patches are temporary
# ---------------------------------------------------------------------------------------------


def test_unet_is_unchanged_after_an_edit_and_after_a_failing_one(unet, clip):
    latents = randn(2, 4, 8, 8, seed=43)
    emb = torch.cat([embeds(44), embeds(45)])
    before = plain_unet(unet, latents, 741, emb)

    _edit(unet, clip, editor="pnp", steps=2, keyframes=[[0, 2]] * 2)
    assert_unpatched(unet)
    assert torch.equal(plain_unet(unet, latents, 741, emb), before)

    def explode(module, args):
        if "forward" in module.get_submodule(rm.CONV_INJECTION_RESNET).conv2.__dict__:
            raise RuntimeError("boom")  # fails inside the patched region

    handle = unet.register_forward_pre_hook(explode)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            _edit(unet, clip, editor="pnp", steps=2, keyframes=[[0, 2]] * 2)
    finally:
        handle.remove()
    assert_unpatched(unet)
    assert torch.equal(plain_unet(unet, latents, 741, emb), before)
