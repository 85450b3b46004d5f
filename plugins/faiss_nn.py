"""Nearest-neighbour backend ``faiss``: exact inner-product search on normalised features with FAISS
(GPU indexes when faiss-gpu is installed and the features live on a GPU)."""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

from vedit.hookspecs import hookimpl


class FaissNearest:
    name = "faiss"
    description = "exact cosine nearest neighbours with FAISS flat inner-product indexes (faiss-gpu on CUDA)"

    def unavailable_reason(self) -> str | None:
        if importlib.util.find_spec("faiss") is None:
            return "needs faiss: pip install 'vedit[faiss]' (or faiss-gpu)"
        return None

    def nearest(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        import faiss  # heavy: imported only when used

        device = queries.device
        q = F.normalize(queries.float(), dim=-1).cpu().numpy()
        k = F.normalize(keys.float(), dim=-1).cpu().numpy()
        index = faiss.IndexFlatIP(k.shape[1])
        if device.type == "cuda" and hasattr(faiss, "StandardGpuResources"):
            index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), device.index or 0, index)
        index.add(k)
        _, found = index.search(q, 1)
        return torch.from_numpy(found[:, 0]).to(device=device, dtype=torch.long)


@hookimpl
def register_nn_backends(register):
    register(FaissNearest())
