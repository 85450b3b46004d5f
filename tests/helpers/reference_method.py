"""A plain, deliberately slow reference implementation of TokenFlow with the PnP and SDEdit editors.

TokenFlow: Geyer, Bar-Tal, Bagon, Dekel, "TokenFlow: Consistent Diffusion Features for Consistent
Video Editing", ICLR 2024. Plug-and-Play (PnP): Tumanyan et al., CVPR 2023. SDEdit: Meng et al.,
ICLR 2022.

This module follows ``DESIGN.md`` ("The method in one page") item by item and is written to be
read and checked by eye, not to be fast: explicit loops over frames, branches and heads, explicit
``q @ k.T * scale`` / softmax / ``@ v``, and plain Python control flow. It is used by the test
suite as an independent oracle for vedit's optimised implementation, so it shares no code with it.

The UNet is intercepted by temporarily replacing, per instance, ``forward`` of every diffusers
``BasicTransformerBlock`` with the re-implementation below, and ``forward`` of the ``conv2`` of
``up_blocks[1].resnets[1]`` with a wrapper that performs PnP's feature injection. Both are
restored in a ``finally`` block.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

# PnP self-attention (query/key) injection targets: decoder transformer blocks 4-11 of SD.
QK_INJECTION_MODULES = (
    "up_blocks.1.attentions.1",
    "up_blocks.1.attentions.2",
    "up_blocks.2.attentions.0",
    "up_blocks.2.attentions.1",
    "up_blocks.2.attentions.2",
    "up_blocks.3.attentions.0",
    "up_blocks.3.attentions.1",
    "up_blocks.3.attentions.2",
)
# PnP residual-block feature injection target.
CONV_INJECTION_RESNET = "up_blocks.1.resnets.1"

BRANCHES = ("source", "uncond", "cond")


# ----------------------------------------------------------------------------------------------
# Small pure helpers named after the maths
# ----------------------------------------------------------------------------------------------


def ddim_step(scheduler, eps: torch.Tensor, t: int, x: torch.Tensor) -> torch.Tensor:
    """One deterministic DDIM step (Song et al. 2021, eq. 12 with eta = 0), epsilon prediction.

    Uses the scheduler's currently set number of inference steps to find the previous timestep,
    exactly as ``DDIMScheduler.step`` does (``prev_t = t - T_train // steps``).
    """
    if scheduler.config.prediction_type != "epsilon":
        raise ValueError("the reference implementation supports epsilon prediction only")
    step_ratio = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    prev_t = t - step_ratio
    alpha_prod_t = scheduler.alphas_cumprod[t]
    if prev_t >= 0:
        alpha_prod_prev = scheduler.alphas_cumprod[prev_t]
    else:
        alpha_prod_prev = scheduler.final_alpha_cumprod
    beta_prod_t = 1 - alpha_prod_t
    pred_x0 = (x - beta_prod_t**0.5 * eps) / alpha_prod_t**0.5
    direction = (1 - alpha_prod_prev) ** 0.5 * eps
    return alpha_prod_prev**0.5 * pred_x0 + direction


def noise_from_endpoints(scheduler, z0: torch.Tensor, zT: torch.Tensor, t_noisiest: int) -> torch.Tensor:
    """Recover the DDIM noise from the noisiest inverted latent: eps = (z_T - sqrt(a_T) z_0) / sqrt(1 - a_T)."""
    alpha_prod = scheduler.alphas_cumprod[t_noisiest]
    return (zT - alpha_prod**0.5 * z0) / (1 - alpha_prod) ** 0.5


def blend_weight(s: int, chunk_index: int, chunk_size: int) -> float:
    """TokenFlow's weight w1 for keyframe i (the frame's own chunk) against keyframe i-1.

    p1 = i*B + B//2, p2 = (i-1)*B + B//2, d1 = |s - p1|, d2 = |s - p2|, w1 = sigmoid(d2 / (d1 + d2)).
    """
    p1 = chunk_index * chunk_size + chunk_size // 2
    p2 = (chunk_index - 1) * chunk_size + chunk_size // 2
    d1 = abs(s - p1)
    d2 = abs(s - p2)
    ratio = d2 / (d1 + d2)
    return 1.0 / (1.0 + math.exp(-ratio))


def chunk_frames(num_frames: int, chunk_size: int) -> list[list[int]]:
    """Consecutive chunks of ``chunk_size`` global frame indices; the last one may be shorter."""
    chunks = []
    start = 0
    while start < num_frames:
        stop = min(start + chunk_size, num_frames)
        chunks.append(list(range(start, stop)))
        start = stop
    return chunks


def attend(attn, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Multi-head softmax attention of one frame's queries, head by head, with explicit matmuls.

    query (Sq, inner), key/value (Sk, inner) -> (Sq, inner), before the output projection.
    """
    heads = attn.heads
    inner = query.shape[-1]
    head_dim = inner // heads
    scale = head_dim**-0.5
    per_head = []
    for h in range(heads):
        lo = h * head_dim
        hi = lo + head_dim
        q_h = query[:, lo:hi]  # (Sq, hd)
        k_h = key[:, lo:hi]  # (Sk, hd)
        v_h = value[:, lo:hi]  # (Sk, hd)
        scores = q_h @ k_h.T * scale  # (Sq, Sk)
        probs = torch.softmax(scores, dim=-1)
        per_head.append(probs @ v_h)  # (Sq, hd)
    return torch.cat(per_head, dim=-1)  # (Sq, inner)


def output_projection(attn, x: torch.Tensor) -> torch.Tensor:
    """The attention module's own output projection: to_out[0] (linear) then to_out[1] (dropout)."""
    return attn.to_out[1](attn.to_out[0](x))


def nearest_neighbours(features: torch.Tensor, keyframe_features: torch.Tensor) -> torch.Tensor:
    """For every token of one frame, the index of the keyframe token with the highest cosine similarity.

    features (S, D), keyframe_features (S, D) -> (S,) long. Full feature dim, no head split.
    """
    a = features / features.norm(dim=-1, keepdim=True)
    b = keyframe_features / keyframe_features.norm(dim=-1, keepdim=True)
    similarity = a @ b.T  # (S, S_key)
    return similarity.argmax(dim=-1)


# ----------------------------------------------------------------------------------------------
# What the patched UNet does on each call
# ----------------------------------------------------------------------------------------------


@dataclass
class BlockRecord:
    """What the keyframe pass records in one transformer block at one step."""

    source_features: torch.Tensor  # (K, S, D): norm1 output of the source branch
    attn_out: torch.Tensor  # (3K, S, D): self-attention output after to_out, before the residual


@dataclass
class EditState:
    """Shared, mutable state read by the patched modules.

    mode: "plain"     every frame attends to itself (ordinary self-attention, any batch);
          "keyframe"  batch is [source K, uncond K, cond K]: extended attention, records kept;
          "propagate" batch is [source n, uncond n, cond n] of chunk ``chunk_index``: TokenFlow.
    """

    mode: str = "plain"
    inject_conv: bool = False
    inject_qk: bool = False
    records: dict[str, BlockRecord] = field(default_factory=dict)
    chunk_index: int = 0
    chunk_frames: list[int] = field(default_factory=list)
    chunk_size: int = 8
    # Filled in the propagation pass, for tests: block name -> (3n, S, D) propagated attention output.
    propagated: dict[str, torch.Tensor] = field(default_factory=dict)
    # Counters, for tests.
    conv_injections: int = 0
    qk_injections: int = 0


def _check_supported_block(block) -> None:
    if block.norm_type != "layer_norm":
        raise NotImplementedError(f"norm_type {block.norm_type!r} is not supported by the reference")
    if block.pos_embed is not None or block.only_cross_attention:
        raise NotImplementedError("pos_embed / only_cross_attention are not supported by the reference")
    attn = block.attn1
    if attn.group_norm is not None or attn.spatial_norm is not None:
        raise NotImplementedError("attention group_norm / spatial_norm are not supported")
    if attn.norm_q is not None or attn.norm_k is not None:
        raise NotImplementedError("query/key norms are not supported")
    if attn.residual_connection or attn.rescale_output_factor != 1.0:
        raise NotImplementedError("attention residual_connection / rescale_output_factor are not supported")


def _self_attention_plain(attn, normed: torch.Tensor) -> torch.Tensor:
    """Ordinary self-attention, frame by frame. normed (F, S, D) -> (F, S, D) after to_out."""
    q = attn.to_q(normed)
    k = attn.to_k(normed)
    v = attn.to_v(normed)
    outs = []
    for f in range(normed.shape[0]):
        outs.append(attend(attn, q[f], k[f], v[f]))
    return output_projection(attn, torch.stack(outs))


def _self_attention_keyframes(attn, normed: torch.Tensor, inject_qk: bool) -> torch.Tensor:
    """Keyframe-pass self-attention on [source K, uncond K, cond K]. Returns (3K, S, D) after to_out.

    Source: per frame. Uncond and cond: each keyframe's queries attend to the keys and values of
    all K keyframes of the same branch concatenated (K*S tokens). With PnP injection, the queries
    and keys (not the values) of uncond and cond are the source branch's, frame for frame.
    """
    num_keyframes = normed.shape[0] // 3
    q = attn.to_q(normed)  # (3K, S, inner)
    k = attn.to_k(normed)
    v = attn.to_v(normed)
    if inject_qk:
        q = q.clone()
        k = k.clone()
        for branch in (1, 2):
            for j in range(num_keyframes):
                q[branch * num_keyframes + j] = q[j]
                k[branch * num_keyframes + j] = k[j]
    outs = []
    for branch in range(3):
        base = branch * num_keyframes
        if branch == 0:
            for j in range(num_keyframes):
                outs.append(attend(attn, q[base + j], k[base + j], v[base + j]))
        else:
            keys = torch.cat([k[base + m] for m in range(num_keyframes)], dim=0)  # (K*S, inner)
            values = torch.cat([v[base + m] for m in range(num_keyframes)], dim=0)
            for j in range(num_keyframes):
                outs.append(attend(attn, q[base + j], keys, values))
    return output_projection(attn, torch.stack(outs))


def _propagated_attention(record: BlockRecord, normed: torch.Tensor, state: EditState) -> torch.Tensor:
    """TokenFlow propagation: no self-attention; nearest-neighbour gather of keyframe outputs.

    normed (3n, S, D) is the norm1 output of [source n, uncond n, cond n] of chunk i. Returns (3n, S, D).
    """
    n = normed.shape[0] // 3
    num_keyframes = record.source_features.shape[0]
    i = state.chunk_index
    source_features = normed[:n]  # (n, S, D)
    out = record.attn_out.new_empty((3 * n,) + tuple(record.attn_out.shape[1:]))  # (3n, S, D)
    for j in range(n):
        s = state.chunk_frames[j]
        idx_own = nearest_neighbours(source_features[j], record.source_features[i])  # (S,)
        if i > 0:
            idx_prev = nearest_neighbours(source_features[j], record.source_features[i - 1])
            w1 = blend_weight(s, i, state.chunk_size)
        for branch in range(3):
            a_own = record.attn_out[branch * num_keyframes + i][idx_own]  # (S, D)
            if i == 0:
                out[branch * n + j] = a_own
            else:
                a_prev = record.attn_out[branch * num_keyframes + i - 1][idx_prev]
                out[branch * n + j] = w1 * a_own + (1 - w1) * a_prev
    return out


def _make_block_forward(block, name: str, state: EditState, qk_target: bool):
    """A plain re-implementation of BasicTransformerBlock.forward (SD: layer_norm, no gating)."""

    def forward(
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        timestep: Any = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        class_labels: Any = None,
        added_cond_kwargs: Any = None,
    ) -> torch.Tensor:
        if attention_mask is not None:
            raise NotImplementedError("self-attention masks are not supported by the reference")
        kwargs = dict(cross_attention_kwargs or {})

        # Self-attention (or its TokenFlow replacement), then the residual.
        normed = block.norm1(hidden_states)  # (F, S, D)
        if state.mode == "plain":
            attn_out = _self_attention_plain(block.attn1, normed)
        elif state.mode == "keyframe":
            inject = state.inject_qk and qk_target
            if inject:
                state.qk_injections += 1
            attn_out = _self_attention_keyframes(block.attn1, normed, inject)
            k = normed.shape[0] // 3
            state.records[name] = BlockRecord(
                source_features=normed[:k].detach().clone(), attn_out=attn_out.detach().clone()
            )
        elif state.mode == "propagate":
            attn_out = _propagated_attention(state.records[name], normed, state)
            state.propagated[name] = attn_out.detach().clone()
        else:
            raise ValueError(f"unknown mode {state.mode!r}")
        hidden_states = attn_out + hidden_states

        # Cross-attention, through the module as usual.
        normed = block.norm2(hidden_states)
        attn_out = block.attn2(
            normed,
            encoder_hidden_states=encoder_hidden_states,
            attention_mask=encoder_attention_mask,
            **kwargs,
        )
        hidden_states = attn_out + hidden_states

        # Feed-forward.
        normed = block.norm3(hidden_states)
        hidden_states = block.ff(normed) + hidden_states
        return hidden_states

    return forward


def _make_conv2_forward(conv, state: EditState):
    """conv2 of the PnP resnet: replace the uncond and cond residual-branch output by the source's."""
    original = type(conv).forward

    def forward(x: torch.Tensor) -> torch.Tensor:
        y = original(conv, x)  # (3n, C, H, W) in the keyframe and propagation passes
        if state.inject_conv and state.mode in ("keyframe", "propagate"):
            state.conv_injections += 1
            n = y.shape[0] // 3
            y = y.clone()
            y[n : 2 * n] = y[:n]
            y[2 * n :] = y[:n]
        return y

    return forward


@contextlib.contextmanager
def patched_unet(unet, state: EditState) -> Iterator[None]:
    """Install the instance-level patches for the duration of the block; always restore them."""
    from diffusers.models.attention import BasicTransformerBlock

    patched: list[tuple[torch.nn.Module, bool, Any]] = []  # (module, had own forward, old forward)

    def install(module, new_forward):
        had_own = "forward" in module.__dict__
        patched.append((module, had_own, module.__dict__.get("forward")))
        module.forward = new_forward

    try:
        for name, module in unet.named_modules():
            if isinstance(module, BasicTransformerBlock):
                _check_supported_block(module)
                qk_target = any(name.startswith(prefix + ".") for prefix in QK_INJECTION_MODULES)
                install(module, _make_block_forward(module, name, state, qk_target))
        conv = unet.get_submodule(CONV_INJECTION_RESNET).conv2
        install(conv, _make_conv2_forward(conv, state))
        yield
    finally:
        for module, had_own, old in reversed(patched):
            if had_own:
                module.forward = old
            else:
                del module.forward


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------


def _unet_eps(unet, latents: torch.Tensor, t: int, embeds: torch.Tensor) -> torch.Tensor:
    return unet(latents, t, encoder_hidden_states=embeds).sample


def _repeat(embeds: torch.Tensor, n: int) -> torch.Tensor:
    return embeds.expand(n, -1, -1)


@torch.no_grad()
def reference_invert(
    unet,
    scheduler,
    clean_latents: torch.Tensor,
    source_embeds: torch.Tensor,
    *,
    inversion_steps: int,
    sample_steps: int,
    batch_size: int = 8,
) -> tuple[dict[int, torch.Tensor], int]:
    """DDIM inversion with the source prompt and guidance 1 (DESIGN item 1).

    Returns {timestep: latents (N,4,h,w)} for every timestep of the ``sample_steps`` sampling
    schedule plus the noisiest latent, and that noisiest timestep.
    """
    num_train = scheduler.config.num_train_timesteps
    scheduler.set_timesteps(sample_steps)
    sample_timesteps = [int(t) for t in scheduler.timesteps]
    scheduler.set_timesteps(inversion_steps)
    inversion_timesteps = sorted(int(t) for t in scheduler.timesteps if int(t) < num_train)
    missing = [t for t in sample_timesteps if t not in inversion_timesteps]
    if missing:
        raise ValueError(f"sampling timesteps {missing} are not in the inversion schedule")

    x = clean_latents.clone()
    trajectory: dict[int, torch.Tensor] = {}
    for i, t in enumerate(inversion_timesteps):
        alpha_prod_t = scheduler.alphas_cumprod[t]
        if i == 0:
            alpha_prod_prev = scheduler.final_alpha_cumprod
        else:
            alpha_prod_prev = scheduler.alphas_cumprod[inversion_timesteps[i - 1]]
        new_x = torch.empty_like(x)
        for b in range(0, x.shape[0], batch_size):
            x_b = x[b : b + batch_size]
            eps = _unet_eps(unet, x_b, t, _repeat(source_embeds, x_b.shape[0]))
            pred_x0 = (x_b - (1 - alpha_prod_prev) ** 0.5 * eps) / alpha_prod_prev**0.5
            new_x[b : b + batch_size] = alpha_prod_t**0.5 * pred_x0 + (1 - alpha_prod_t) ** 0.5 * eps
        x = new_x
        if t in sample_timesteps or i == len(inversion_timesteps) - 1:
            trajectory[t] = x.clone()
    scheduler.set_timesteps(sample_steps)
    return trajectory, inversion_timesteps[-1]


@torch.no_grad()
def reference_sample(unet, scheduler, noisy_latents: torch.Tensor, embeds: torch.Tensor, *, steps: int) -> torch.Tensor:
    """Plain DDIM sampling (eta 0) with one prompt and guidance 1, from the schedule's first timestep."""
    scheduler.set_timesteps(steps)
    x = noisy_latents
    for t in [int(t) for t in scheduler.timesteps]:
        eps = _unet_eps(unet, x, t, _repeat(embeds, x.shape[0]))
        x = ddim_step(scheduler, eps, t, x)
    return x


def edit_timesteps(scheduler, steps: int, editor: str, start: float) -> list[int]:
    """The timesteps actually run: all T for PnP, the last round(start*T) for SDEdit."""
    scheduler.set_timesteps(steps)
    timesteps = [int(t) for t in scheduler.timesteps]
    if editor == "pnp":
        return timesteps
    if editor == "sdedit":
        num_run = round(start * steps)
        return timesteps[len(timesteps) - num_run :]
    raise ValueError(f"unknown editor {editor!r}")


@torch.no_grad()
def reference_edit(
    unet,
    scheduler,
    *,
    clean_latents: torch.Tensor,
    trajectory: dict[int, torch.Tensor],
    noisiest_t: int,
    source_embeds: torch.Tensor,
    uncond_embeds: torch.Tensor,
    cond_embeds: torch.Tensor,
    steps: int,
    guidance: float = 7.5,
    editor: str = "pnp",
    pnp_f_t: float = 0.8,
    pnp_attn_t: float = 0.5,
    start: float = 0.9,
    chunk_size: int = 8,
    keyframes: list[list[int]],
    trace: list[dict[str, Any]] | None = None,
) -> torch.Tensor:
    """TokenFlow editing with the PnP or SDEdit editor (DESIGN items 2-4). Returns latents (N,4,h,w).

    ``keyframes`` holds one list per denoising step actually run, each with one global frame index
    per chunk. ``trace``, if given, receives one dict per step (for tests).
    """
    trajectory = {int(t): v for t, v in trajectory.items()}
    num_frames = clean_latents.shape[0]
    chunks = chunk_frames(num_frames, chunk_size)
    run = edit_timesteps(scheduler, steps, editor, start)  # also sets the T-step schedule
    full_schedule = [int(t) for t in scheduler.timesteps]

    if len(keyframes) != len(run):
        raise ValueError(f"keyframes has {len(keyframes)} steps, the edit runs {len(run)}")
    for step_keyframes in keyframes:
        if len(step_keyframes) != len(chunks):
            raise ValueError(f"each keyframe list needs {len(chunks)} entries, got {step_keyframes}")
        for chunk, k in zip(chunks, step_keyframes):
            if k not in chunk:
                raise ValueError(f"keyframe {k} is not inside its chunk {chunk}")

    if editor == "pnp":
        conv_steps = set(full_schedule[: int(steps * pnp_f_t)])
        qk_steps = set(full_schedule[: int(steps * pnp_attn_t)])
    else:
        conv_steps = set()
        qk_steps = set()

    # Start latent: the DDIM noise recovered from z_T, added to z_0 at the first timestep run.
    z0 = clean_latents
    noise = noise_from_endpoints(scheduler, z0, trajectory[noisiest_t], noisiest_t)
    x = scheduler.add_noise(z0, noise, torch.tensor([run[0]]))

    state = EditState(chunk_size=chunk_size)
    with patched_unet(unet, state):
        for step_index, t in enumerate(run):
            state.inject_conv = t in conv_steps
            state.inject_qk = t in qk_steps
            source_latents = trajectory[t]
            step_keyframes = list(keyframes[step_index])
            k = len(step_keyframes)

            # Keyframe pass: records features and attention outputs; its prediction is not used.
            state.mode = "keyframe"
            state.records = {}
            batch = torch.cat([source_latents[step_keyframes], x[step_keyframes], x[step_keyframes]])
            embeds = torch.cat([_repeat(source_embeds, k), _repeat(uncond_embeds, k), _repeat(cond_embeds, k)])
            _unet_eps(unet, batch, t, embeds)

            # Propagation pass, chunk by chunk; every frame's DDIM step uses this prediction.
            state.mode = "propagate"
            eps = torch.empty_like(x)
            for i, frames in enumerate(chunks):
                n = len(frames)
                state.chunk_index = i
                state.chunk_frames = frames
                batch = torch.cat([source_latents[frames], x[frames], x[frames]])
                embeds = torch.cat([_repeat(source_embeds, n), _repeat(uncond_embeds, n), _repeat(cond_embeds, n)])
                e = _unet_eps(unet, batch, t, embeds)
                e_uncond = e[n : 2 * n]
                e_cond = e[2 * n :]
                eps[frames] = e_uncond + guidance * (e_cond - e_uncond)

            if trace is not None:
                trace.append(
                    {
                        "step": step_index,
                        "t": t,
                        "inject_conv": state.inject_conv,
                        "inject_qk": state.inject_qk,
                        "keyframes": step_keyframes,
                    }
                )
            x = ddim_step(scheduler, eps, t, x)
            state.mode = "plain"
    return x
