"""Attention (vedit.method.attention): keyframe attention bounded by ``--max-joint-keyframes``, and the
plain pass's attention as one fused call."""

from __future__ import annotations

import torch
from torch import nn

from vedit.method.attention import bounded_joint_attention, joint_attention
from vedit.method.passes import joint_partners


class _Heads(nn.Module):
    heads = 2


def test_bounded_attention_with_every_partner_is_joint_attention():
    generator = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(5, 16, 8, generator=generator) for _ in range(3))
    everyone = joint_partners(5, 5)
    assert torch.allclose(bounded_joint_attention(_Heads(), q, k, v, everyone), joint_attention(_Heads(), q, k, v),
                          atol=1e-6, rtol=0)  # fmt: skip


def test_bounded_attention_sees_only_each_frames_partners(monkeypatch):
    generator = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(6, 10, 8, generator=generator) for _ in range(3))
    partners = torch.tensor([[0, 1, 4], [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 5], [0, 4, 5]])
    out = bounded_joint_attention(_Heads(), q, k, v, partners)
    for i, row in enumerate(partners.tolist()):
        alone = joint_attention(_Heads(), q[[i]].repeat(3, 1, 1), k[row], v[row])[0]  # i's queries over its partners
        assert torch.allclose(out[i], alone, atol=1e-6, rtol=0)
    changed_k, changed_v = k.clone(), v.clone()
    changed_k[5], changed_v[5] = 0, 0  # frame 5 is a partner of 4 and 5 only
    changed = bounded_joint_attention(_Heads(), q, changed_k, changed_v, partners)
    assert torch.equal(changed[:4], out[:4]) and not torch.allclose(changed[4], out[4])
    # the gather goes in blocks of frames when it would be large: same result
    monkeypatch.setattr("vedit.method.attention.MAX_GATHERED_ELEMENTS", 3 * 10 * 8 * 2)  # two frames per block
    assert torch.allclose(bounded_joint_attention(_Heads(), q, k, v, partners), out, atol=1e-6, rtol=0)


def test_attention_is_one_fused_call_where_it_used_to_be_blocked(monkeypatch):
    """vedit's attention makes the very call diffusers' processor makes when a fused kernel runs
    (it used to split the queries into blocks on the CPU); it still blocks for the math fallback."""
    import torch
    import torch.nn.functional as F

    from vedit.method import attention

    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 4096, 8, generator=gen) for _ in range(3))  # 2048 queries a block before
    assert attention.MAX_SCORES_PER_BLOCK // (4096 * 2) < 4096
    sdpa = F.scaled_dot_product_attention
    calls = []
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **kw: calls.append(a[0].shape) or sdpa(*a, **kw))
    whole = sdpa(q, k, v)
    assert torch.equal(attention.attend(q, k, v), whole)
    assert calls == [q.shape]
    calls.clear()
    monkeypatch.setattr(attention, "_fused_kernel", lambda *args: False)  # as where only the math kernel runs
    assert torch.allclose(attention.attend(q, k, v), whole, atol=1e-6)
    assert calls == [torch.Size([1, 2, 2048, 8])] * 2


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


def test_one_cosine_search_blocked_over_tokens_serves_the_backend_and_every_traced_batch(monkeypatch):
    """The propagation pass's in-graph search and the torch backend are one function: blocked over the
    tokens (not the frames), so its trace holds for another frame count, and bitwise the one product."""
    import torch.nn.functional as F

    from vedit.method import attention
    from vedit_plugins.nn_backends import torch as torch_nn

    def one_product(q, k):
        return (F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).T).argmax(-1).reshape(-1)

    gen = torch.Generator().manual_seed(6)
    queries, keys = torch.randn(2, 300, 16, generator=gen), torch.randn(70, 16, generator=gen)
    monkeypatch.setattr(attention, "MAX_SCORES_PER_BLOCK", 70 * 7)  # 7 tokens a block: 43 blocks per frame
    expected = one_product(queries, keys)
    assert torch.equal(attention.cosine_nearest(queries, keys), expected)
    assert torch.equal(torch_nn.TorchNearest().nearest(queries.reshape(-1, 16), keys), expected)
    traced = torch.jit.trace(attention.cosine_nearest, (queries, keys), check_trace=False)
    three = torch.randn(3, 300, 16, generator=gen)
    assert torch.equal(traced(three, keys), one_product(three, keys))
