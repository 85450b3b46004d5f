"""Nearest-neighbour backend ``torch``: exact cosine nearest neighbours with blocked matmuls."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vedit.hookspecs import hookimpl

# Similarity entries computed at once; bounds memory whatever the number of tokens.
BLOCK_ELEMENTS = 1 << 24


def cosine_nearest(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Index in ``keys`` (m, d) of the most cosine-similar row for each row of ``queries`` (n, d)."""
    queries = F.normalize(queries, dim=-1)
    keys = F.normalize(keys, dim=-1)
    rows = max(1, BLOCK_ELEMENTS // max(1, keys.shape[0]))
    return torch.cat([(queries[s : s + rows] @ keys.T).argmax(dim=-1) for s in range(0, queries.shape[0], rows)])


class TorchNearest:
    name = "torch"
    description = "exact cosine nearest neighbours with torch matmuls (any device, works inside compiled graphs)"
    traceable = True  # the propagation pass then searches in its own graph (vedit.passes.cosine_nearest_tokens)

    def nearest(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        return cosine_nearest(queries, keys)


@hookimpl
def register_nn_backends(register):
    register(TorchNearest())


@hookimpl(trylast=True)
def choose_nn_backend(device):
    return "torch"
