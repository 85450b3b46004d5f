"""Self-attention building blocks shared by attention handlers (fused, memory-bounded)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .unet import CallContext, LayerInfo, inject_from_source

# Where scaled_dot_product_attention would run its math fallback (which holds every query × key
# score), queries are processed in blocks of at most this many scores per head, so that attention
# over many frames' tokens never materialises one huge score matrix. A fused kernel (CUDA's, and
# PyTorch's CPU flash kernel) never holds it and gets the whole call.
MAX_SCORES_PER_BLOCK = 1 << 24


def project_qkv(
    attn: nn.Module, hidden_states: torch.Tensor, ctx: CallContext, layer: LayerInfo
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries, keys and values (b, seq, inner), with the source branch's Q and K injected where on."""
    query = attn.to_q(hidden_states)
    key = attn.to_k(hidden_states)
    value = attn.to_v(hidden_states)
    if layer.inject_qk:
        query = inject_from_source(query, ctx, ctx.injection.qk)
        key = inject_from_source(key, ctx, ctx.injection.qk)
    return query, key, value


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, seq, inner = x.shape
    return x.view(b, seq, heads, inner // heads).transpose(1, 2)  # (b, heads, seq, d)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, heads, seq, d = x.shape
    return x.transpose(1, 2).reshape(b, seq, heads * d)  # (b, seq, inner)


def in_graph() -> bool:
    """Whether a compiler or exporter is tracing: fused kernels bound memory there, and a Python
    loop over shapes would tie the graph to the example's batch size."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting()


def _fused_kernel(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> bool:
    """Whether ``scaled_dot_product_attention`` runs a fused kernel on these inputs (one that works
    through the keys block by block), not its math fallback."""
    choose = getattr(torch, "_fused_sdp_choice", None)
    if choose is None:
        return False
    try:
        return int(choose(query, key, value)) > 0  # SDPBackend: ERROR -1, MATH 0, the fused ones above
    except (RuntimeError, TypeError, ValueError):  # a private function: should it change, block as before
        return False


def attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Softmax attention (b, heads, q, d) × (b, heads, k, d): one ``scaled_dot_product_attention``
    call, exactly as diffusers' own processor makes it, except where that would be the math
    fallback holding a score matrix of more than ``MAX_SCORES_PER_BLOCK`` per head: then the
    queries go in bounded blocks.

    Blocking when a fused kernel runs anyway only costs: at 512×512 (4096 tokens, 5 heads, 8
    frames) 41 calls of 102 queries took 1.10 s against 0.66 s for the one call (2 CPU cores).
    """
    if query.device.type == "cuda" or in_graph():
        return F.scaled_dot_product_attention(query, key, value)
    q_len, k_len = query.shape[-2], key.shape[-2]
    block = max(1, MAX_SCORES_PER_BLOCK // max(1, k_len * query.shape[0] * query.shape[1]))
    if block >= q_len or _fused_kernel(query, key, value):
        return F.scaled_dot_product_attention(query, key, value)
    return torch.cat(
        [F.scaled_dot_product_attention(query[..., s : s + block, :], key, value) for s in range(0, q_len, block)],
        dim=-2,
    )


def project_out(attn: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    hidden_states = attn.to_out[0](hidden_states)
    return attn.to_out[1](hidden_states)


def per_frame_attention(attn: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Ordinary self-attention of every frame on its own tokens; (b, seq, inner) in and out."""
    heads = attn.heads
    out = attend(split_heads(query, heads), split_heads(key, heads), split_heads(value, heads))
    return merge_heads(out)


def joint_attention(attn: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Extended attention: every frame's queries attend to the tokens of all frames given.

    Equivalent to concatenating the keys and values of all frames for each frame's queries,
    without repeating them per frame: the frames' queries are laid side by side as one sequence.
    """
    frames, seq, inner = query.shape
    heads = attn.heads
    flat = lambda x: split_heads(x.reshape(1, frames * seq, inner), heads)  # noqa: E731  (1, heads, F·seq, d)
    out = attend(flat(query), flat(key), flat(value))
    return merge_heads(out).reshape(frames, seq, inner)


# Keys and values gathered at once by bounded joint attention (elements of each); bounds the
# memory of the gather whatever the number of keyframes.
MAX_GATHERED_ELEMENTS = 1 << 26


def bounded_joint_attention(
    attn: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, partners: torch.Tensor
) -> torch.Tensor:
    """Extended attention over chosen frames: frame ``i``'s queries attend to the tokens of frames
    ``partners[i]`` (a (frames, M) index tensor), in that order.

    With every row listing all frames this is :func:`joint_attention`; with M < frames it costs
    O(frames · M) instead of O(frames²). The keys and values are gathered for a block of frames at
    a time, at most ``MAX_GATHERED_ELEMENTS`` each.
    """
    frames, seq, inner = query.shape
    width = partners.shape[1]
    heads = attn.heads
    block = max(1, MAX_GATHERED_ELEMENTS // max(1, width * seq * inner))
    parts = []
    for start in range(0, frames, block):  # static shapes: a traced graph unrolls the same blocks
        rows = partners[start : start + block]
        n = rows.shape[0]
        k = key.index_select(0, rows.reshape(-1)).reshape(n, width * seq, inner)
        v = value.index_select(0, rows.reshape(-1)).reshape(n, width * seq, inner)
        out = attend(split_heads(query[start : start + n], heads), split_heads(k, heads), split_heads(v, heads))
        parts.append(merge_heads(out))
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def cosine_nearest(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """For each row of ``queries`` (…, q, dim), the index of its cosine nearest row of ``keys`` (m, dim),
    as (…·q,) int64 in the queries' order: TokenFlow's correspondence search (Geyer et al., Sec. 4.2),
    full feature dim, no head split.

    The q axis goes in blocks of at most ``MAX_SCORES_PER_BLOCK`` similarities per leading index, so
    memory stays bounded whatever the token count. The blocks depend on q and m only, never on the
    leading (frame) dimensions, so a traced or exported graph serves every batch size; up to 64×64
    latents (q = m = 4096) a frame's search is one product.
    """
    q = F.normalize(queries, dim=-1)
    k = F.normalize(keys, dim=-1).transpose(0, 1)  # (dim, m)
    count = queries.shape[-2]
    rows = max(1, MAX_SCORES_PER_BLOCK // max(1, keys.shape[0]))
    if count <= rows:
        return torch.matmul(q, k).argmax(dim=-1).reshape(-1)
    blocks = [torch.matmul(q[..., s : s + rows, :], k).argmax(dim=-1) for s in range(0, count, rows)]
    return torch.cat(blocks, dim=-1).reshape(-1)


class PlainAttention:
    """Each frame attends to itself, as in the unmodified UNet (with Q/K injection where on)."""

    def self_attention(
        self, layer: LayerInfo, attn: nn.Module, hidden_states: torch.Tensor, ctx: CallContext
    ) -> torch.Tensor:
        query, key, value = project_qkv(attn, hidden_states, ctx, layer)
        return project_out(attn, per_frame_attention(attn, query, key, value))
