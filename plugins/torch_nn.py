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


# ``--nn-backend auto``: the built-in answer (``trylast``, so a plugin's answer comes first).
#
# CPU, measured (2-core Xeon VM, fp32, B = 8, FAISS 1.15.1 / torch 2.13; one thread each and
# the thread's CPU time, which other work on the machine does not inflate):
#   python -c "from vedit_bench.nn import run_nn_suite as r; r(seqs=[4096, 1024, 256, 64],
#     chunk_size=8, backends=None, device='cpu', dtype='fp32', repeats=5, threads=1, clock='cpu',
#     save='bench/results/nn-cpu-1thread.json')"          (and seqs=[144, 400, 576, 960, 1600, 2304]
#     for bench/results/nn-cpu-1thread-top.json: the top level of smaller images, dim 320)
#   faiss ÷ in-graph search, ms per search:
#     SD at 512×512:  seq 4096 (dim 320) 0.70 (588 vs 837), 1024 (640) 0.86 (77.5 vs 89.9),
#                     256 (1280) 1.02 (11.7 vs 11.5), 64 (1280) 1.21 (1.2 vs 1.0);
#                     one propagation pass (2 searches × 16 blocks) 0.72: 6.8 s vs 9.4 s
#     top level, dim 320: 144 tokens 1.00, 400 0.84, 576 0.81, 960 0.74, 1600 0.74, 2304 0.72
# FAISS's blocked GEMM with a fused top-1 does the same product as the in-graph search without
# writing and re-reading the whole B·seq × seq score matrix. The cost of leaving the graph is nil
# on the CPU: `--engine auto` is eager there (compiled engines measured 0.86–0.97× eager), and the
# eager propagation pass runs a Python backend with no warning. Hence faiss on the CPU when it is
# installed and a frame has at least FAISS_CPU_MIN_TOKENS tokens (the smallest measured size at
# which it was faster; at 144 the two were even), else torch. Tokens unknown (a caller that does not
# pass them): torch.
#
# CUDA: torch (not measured on a GPU). Each search is one GEMM (at most 32768 × 4096 × 320 at
# 512×512, B = 8) and an argmax: cuBLAS runs it on tensor cores in fp16/bf16, inside the pass's
# compiled graph under `compile`/TensorRT. FAISS's GPU brute force (from its source) computes the
# same product in cuBLAS's pedantic fp32 compute mode for fp16 inputs and as SGEMM without TF32 for
# fp32, i.e. off the reduced-precision tensor-core paths torch's fp16 matmul takes, in tiles of 512
# queries, then runs its k-selection kernels; and it forces the propagation pass out of any
# compiled engine. So torch should win there at every size TokenFlow searches.
#
# MPS and other devices: torch (FAISS would go through host memory).
FAISS_CPU_MIN_TOKENS = 400


def _faiss_runs_here() -> bool:
    from vedit import plugins

    entry = plugins.registered("nn_backend").get("faiss")
    return entry is not None and entry.unavailable_reason() is None


def _device_type(device) -> str:
    try:
        return torch.device(device).type
    except (RuntimeError, TypeError):
        return str(device)


@hookimpl(trylast=True)
def choose_nn_backend(device, tokens):
    if _device_type(device) == "cpu" and tokens is not None and tokens >= FAISS_CPU_MIN_TOKENS and _faiss_runs_here():
        return "faiss"
    return "torch"
