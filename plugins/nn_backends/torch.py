"""Nearest-neighbour backend ``torch``: exact cosine nearest neighbours with blocked matmuls, the very
search the propagation pass makes inside its own graph (:func:`vedit.method.attention.cosine_nearest`)."""

from __future__ import annotations

import torch

from vedit.method.attention import cosine_nearest
from vedit.plugins.hookspecs import hookimpl


class TorchNearest:
    name = "torch"
    description = "exact cosine nearest neighbours with torch matmuls (any device, works inside compiled graphs)"
    traceable = True  # the propagation pass then makes this same search in its own graph

    def nearest(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        return cosine_nearest(queries, keys)


@hookimpl
def register_nn_backends(register):
    register(TorchNearest())


# ``--nn-backend auto``: the built-in answer (``trylast``, so a plugin's answer comes first).
#
# CPU, measured on this project's 2-core Xeon VM (fp32, B = 8, FAISS 1.15.1, torch 2.13, two
# threads each, wall clock, median of 7, the machine otherwise idle):
#   vedit bench nn --device cpu --dtype fp32 --chunk-size 8 --repeats 7 --save bench/results/nn-cpu.json
#   vedit bench nn --device cpu --dtype fp32 --chunk-size 8 --repeats 7 --seqs 144,400,960,1600,2304 \
#       --save bench/results/nn-cpu-top.json      (the top level of smaller images: dim 320)
# faiss ÷ in-graph search (ms per search, faiss vs in-graph):
#   SD at 512×512:     seq 4096 (dim 320) 0.72 (289 vs 403), 1024 (640) 0.99 (35.8 vs 36.0),
#                      256 (1280) 1.01 (4.97 vs 4.91), 64 (1280) 1.13 (0.64 vs 0.57);
#                      one propagation pass of 8 frames (2 searches × 16 blocks) 0.74: 3.29 s vs 4.44 s
#   top level, dim 320: 144 tokens 1.20, 400 0.96, 960 0.83, 1600 0.80, 2304 0.76, 4096 0.72
# One thread each, timing the thread's CPU time (which other work on a shared machine does not
# inflate): 0.70 at 4096, 0.72 for the whole pass (bench/results/nn-cpu-1thread.json, from
# run_nn_suite(seqs=[4096, 1024, 256, 64], chunk_size=8, backends=None, device="cpu", dtype="fp32",
# repeats=5, threads=1, clock="cpu", save=...) in vedit_bench.nn).
# FAISS's blocked GEMM with a fused top-1 does the in-graph search's product without writing and
# re-reading the whole B·seq × seq score matrix (512 MiB at seq 4096), which is why its lead grows
# with the token count. A Python backend loses nothing where the passes run eagerly (`--engine
# auto` on the CPU: compiled engines measured 0.86–0.97× eager), and the pipeline tells this hook
# the run's tokens only then. Hence: faiss on the CPU when it runs here and a frame has at least
# FAISS_CPU_MIN_TOKENS tokens (from 960 it was clearly faster; at 400 within 4 %; at 144 slower,
# by 0.1 ms), else torch; tokens not given (a compiled engine, or a caller that does not know): torch.
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
FAISS_CPU_MIN_TOKENS = 960


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
