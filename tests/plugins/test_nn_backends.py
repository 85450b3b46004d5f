"""Nearest-neighbour backends (vedit_plugins.nn_backends): faiss equals torch except on exact ties, the GPU
path's use of FAISS, and the ``--nn-backend auto`` rule."""

from __future__ import annotations

import contextlib
import ctypes

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vedit import plugins
from vedit_plugins.nn_backends import faiss as faiss_nn
from vedit_plugins.nn_backends import torch as torch_nn


def _faiss_backend():
    pytest.importorskip("faiss")
    return faiss_nn.FaissNearest()


def _similarity(queries: torch.Tensor, keys: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """Cosine similarity (fp64) of each query to the key chosen for it."""
    q = F.normalize(queries.double(), dim=-1)
    k = F.normalize(keys.double(), dim=-1)
    return (q * k[chosen]).sum(-1)


def _best(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    return (F.normalize(queries.double(), dim=-1) @ F.normalize(keys.double(), dim=-1).T).max(-1).values


# ------------------------------------------------------------------------------ faiss vs torch


@pytest.mark.parametrize(
    "frames, seq, dim",
    [(1, 4096, 320), (2, 1024, 640), (8, 256, 1280), (8, 64, 1280)],
    ids=["seq4096", "seq1024", "seq256", "seq64"],
)
def test_faiss_gives_torchs_indices_except_on_ties(frames, seq, dim):
    """TokenFlow's sizes at 512×512 (fewer frames for speed): B·seq queries against seq keys."""
    backend = _faiss_backend()
    gen = torch.Generator().manual_seed(seq)
    keys = torch.randn(seq, dim, generator=gen)
    # Half the queries are noisy copies of keys (like the next frame's tokens), half unrelated.
    near = keys[torch.randint(seq, (frames * seq // 2,), generator=gen)] + 0.3 * torch.randn(
        frames * seq // 2, dim, generator=gen
    )
    queries = torch.cat([near, torch.randn(frames * seq - len(near), dim, generator=gen)])

    expected = torch_nn.cosine_nearest(queries, keys)
    found = backend.nearest(queries, keys)
    assert found.dtype == torch.long and found.shape == (frames * seq,) and found.device == queries.device

    differ = found != expected
    assert differ.float().mean() < 1e-3  # rounding decides only near-ties
    # Where they differ, both chosen keys are equally similar to the query up to float rounding.
    gap = (_similarity(queries, keys, found) - _similarity(queries, keys, expected)).abs()
    assert bool((gap[differ] < 1e-5).all()), gap[differ]
    # And both are the best key up to rounding.
    best = _best(queries, keys)
    assert bool(((best - _similarity(queries, keys, found)) < 1e-5).all())
    assert bool(((best - _similarity(queries, keys, expected)) < 1e-5).all())


def test_on_exact_ties_both_return_a_most_similar_key():
    backend = _faiss_backend()
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(40, 64, generator=gen)
    # Every key three times: itself, an exact copy, and a scaled copy (the same cosine).
    keys = torch.cat([base, base.clone(), 3.0 * base])[torch.randperm(120, generator=gen)]
    queries = torch.cat([base[torch.randint(40, (100,), generator=gen)] + 0.05 * torch.randn(100, 64, generator=gen),
                         base[:20]])  # fmt: skip
    best = _best(queries, keys)
    for found in (torch_nn.cosine_nearest(queries, keys), backend.nearest(queries, keys)):
        assert bool(((best - _similarity(queries, keys, found)) < 1e-6).all())
        # The chosen key is one of the three copies of the right base row.
        owner = (F.normalize(keys, dim=-1)[found] - F.normalize(queries, dim=-1)).norm(dim=-1)
        assert bool((owner[100:] < 1e-5).all())


def test_faiss_takes_half_precision_and_non_contiguous_features():
    backend = _faiss_backend()
    gen = torch.Generator().manual_seed(2)
    keys = torch.randn(50, 32, generator=gen)
    queries = torch.randn(32, 300, generator=gen).T  # (300, 32), not contiguous
    expected = torch_nn.cosine_nearest(queries, keys)
    assert torch.equal(backend.nearest(queries, keys), expected)
    found = backend.nearest(queries.bfloat16(), keys.bfloat16())
    best = _best(queries.bfloat16(), keys.bfloat16())
    assert bool(((best - _similarity(queries.bfloat16(), keys.bfloat16(), found)) < 1e-5).all())
    assert backend.nearest(queries[:0], keys).shape == (0,)
    with pytest.raises(ValueError, match="share d"):
        backend.nearest(queries, keys[:, :16])


def test_the_registry_hands_out_one_faiss_backend_for_the_process():
    pytest.importorskip("faiss")
    first = plugins.get("nn_backend", "faiss")
    plugins.reset()
    assert plugins.get("nn_backend", "faiss") is first is faiss_nn.BACKEND


# ------------------------------------------------------------------------------ the GPU path


class _FakeResources:
    made = 0

    def __init__(self):
        type(self).made += 1
        self.temp_memory = None
        self.stream = "own stream"
        self.streams_set: list = []

    def setTempMemory(self, size):
        self.temp_memory = size

    def getDefaultStream(self, device):
        return self.stream

    def setDefaultStream(self, device, stream):
        self.streams_set.append((device, stream))
        self.stream = stream


class _FakeParams:
    """Like FAISS's GpuDistanceParams: the fields bfKnn reads, with FAISS's defaults."""

    def __init__(self):
        self.metric, self.k, self.dims, self.device = 1, 0, 0, -1
        self.vectors = self.queries = self.outDistances = self.outIndices = None
        self.vectorType = self.queryType = 1
        self.vectorsRowMajor = self.queriesRowMajor = True
        self.numVectors = self.numQueries = 0
        self.outIndicesType = 1
        self.ignoreOutDistances = False
        self.use_cuvs = True


def _read(pointer, count: int, kind: int) -> np.ndarray:
    """The ``count`` numbers at a raw address: fp32 (kind 1) or fp16 (kind 2)."""
    ctype, dtype = {1: (ctypes.c_float, np.float32), 2: (ctypes.c_uint16, np.float16)}[kind]
    return np.frombuffer((ctype * count).from_address(pointer[1]), dtype=dtype).copy()


class _FakeFaiss:
    """A stand-in for faiss-gpu's Python module: records what the backend hands to bfKnn, and
    answers the search itself by reading the memory behind the pointers it was given."""

    METRIC_INNER_PRODUCT, METRIC_L2 = 0, 1
    DistanceDataType_F32, DistanceDataType_F16, DistanceDataType_BF16 = 1, 2, 3
    IndicesDataType_I64, IndicesDataType_I32 = 1, 2
    GpuDistanceParams = _FakeParams
    StandardGpuResources = _FakeResources

    def __init__(self):
        self.calls: list[dict] = []

    @staticmethod
    def cast_integer_to_void_ptr(x):
        return ("void*", x)

    @staticmethod
    def cast_integer_to_float_ptr(x):
        return ("float*", x)

    @staticmethod
    def cast_integer_to_cudastream_t(x):
        return ("stream", x)

    @staticmethod
    def get_num_gpus():
        return 1

    def bfKnn(self, resources, params):
        queries = _read(params.queries, params.numQueries * params.dims, params.queryType).reshape(
            params.numQueries, params.dims
        )
        vectors = _read(params.vectors, params.numVectors * params.dims, params.vectorType).reshape(
            params.numVectors, params.dims
        )
        out = np.frombuffer((ctypes.c_int64 * params.numQueries).from_address(params.outIndices[1]), dtype=np.int64)
        out[:] = (queries.astype(np.float64) @ vectors.astype(np.float64).T).argmax(-1)
        self.calls.append({"params": vars(params).copy(), "stream": resources.stream, "resources": resources,
                           "queries": queries, "vectors": vectors})  # fmt: skip


@pytest.fixture
def fake_gpu(monkeypatch):
    """The backend's two CUDA seams replaced so that its GPU path runs on CPU tensors; any host
    round trip (``.cpu()``, ``.numpy()``) made inside it fails the test."""
    monkeypatch.setattr(faiss_nn, "_cuda_scope", lambda index: contextlib.nullcontext())
    monkeypatch.setattr(faiss_nn, "_cuda_stream", lambda device: 0xC0DA)
    _FakeResources.made = 0

    def refuse(self, *args, **kwargs):
        raise AssertionError("the GPU path copied a tensor to the host")

    @contextlib.contextmanager
    def no_host_copies():
        with monkeypatch.context() as patch:
            patch.setattr(torch.Tensor, "cpu", refuse)
            patch.setattr(torch.Tensor, "numpy", refuse)
            yield

    return _FakeFaiss(), no_host_copies


@pytest.mark.parametrize("dtype, kind", [(torch.float32, 1), (torch.float16, 2), (torch.bfloat16, 2)])
def test_gpu_path_hands_faiss_the_tensors_memory_and_writes_torch_indices(fake_gpu, dtype, kind):
    fake, no_host_copies = fake_gpu
    backend = faiss_nn.FaissNearest()
    gen = torch.Generator().manual_seed(3)
    queries, keys = torch.randn(96, 24, generator=gen).to(dtype), torch.randn(40, 24, generator=gen).to(dtype)
    with no_host_copies():
        found = backend._search_gpu(fake, queries, keys, 0)
    assert found.dtype == torch.long and found.shape == (96,) and found.device == queries.device

    (call,) = fake.calls
    p = call["params"]
    assert p["metric"] == fake.METRIC_INNER_PRODUCT and p["k"] == 1 and p["dims"] == 24 and p["device"] == 0
    assert (p["numQueries"], p["numVectors"]) == (96, 40)
    assert p["queryType"] == p["vectorType"] == kind  # bf16 goes in as fp16; fp32 stays fp32
    assert p["queriesRowMajor"] and p["vectorsRowMajor"]
    assert p["outIndicesType"] == fake.IndicesDataType_I64
    assert p["use_cuvs"] is False and p["ignoreOutDistances"] is True
    # FAISS read unit rows and wrote straight into the returned tensor.
    unit = F.normalize(queries.float(), dim=-1).numpy()
    assert np.allclose(call["queries"], unit, atol=2e-3 if kind == 2 else 1e-6)
    assert p["outIndices"] == ("void*", found.data_ptr())
    best = _best(queries, keys)
    assert bool(((best - _similarity(queries, keys, found)) < (2e-3 if kind == 2 else 1e-6)).all())
    # On PyTorch's current stream, and the resources' own stream restored afterwards.
    assert call["stream"] == ("stream", 0xC0DA)
    assert call["resources"].stream == "own stream"


def test_gpu_resources_are_made_once_per_device_and_kept(fake_gpu):
    fake, no_host_copies = fake_gpu
    backend = faiss_nn.FaissNearest()
    queries, keys = torch.randn(10, 8), torch.randn(5, 8)
    with no_host_copies():
        for device in (0, 0, 1, 0, 1):
            backend._search_gpu(fake, queries, keys, device)
    assert _FakeResources.made == 2
    made = {id(call["resources"]) for call in fake.calls}
    assert len(made) == 2
    for call in fake.calls:
        assert call["resources"].temp_memory == faiss_nn.TEMP_MEMORY_BYTES
        assert call["params"]["device"] in (0, 1)
    assert [c["params"]["device"] for c in fake.calls] == [0, 0, 1, 0, 1]


def test_gpu_search_is_recognised_only_in_a_faiss_with_gpus():
    assert faiss_nn._has_gpu_search(_FakeFaiss())

    class NoGpus(_FakeFaiss):
        @staticmethod
        def get_num_gpus():
            return 0

    assert not faiss_nn._has_gpu_search(NoGpus())
    assert not faiss_nn._has_gpu_search(type("CpuOnly", (), {"knn": None})())


# ------------------------------------------------------------------------------ --nn-backend auto


def test_auto_is_torch_on_cuda_and_where_the_size_is_unknown():
    assert plugins.choose("nn_backend", "auto", "cpu").name == "torch"
    assert plugins.choose("nn_backend", "auto", torch.device("cpu"), tokens=None).name == "torch"
    for tokens in (None, 64, 4096, 16384):
        assert torch_nn.choose_nn_backend(device=torch.device("cuda", 0), tokens=tokens) == "torch"
        assert torch_nn.choose_nn_backend(device="mps", tokens=tokens) == "torch"


def test_auto_on_the_cpu_follows_the_measured_crossover():
    pytest.importorskip("faiss")
    crossover = torch_nn.FAISS_CPU_MIN_TOKENS
    assert 400 < crossover <= 4096  # faiss measured faster from 960 tokens, even at 400 and below
    assert plugins.choose("nn_backend", "auto", "cpu", tokens=64 * 64).name == "faiss"  # SD at 512×512
    assert plugins.choose("nn_backend", "auto", torch.device("cpu"), tokens=crossover).name == "faiss"
    assert plugins.choose("nn_backend", "auto", "cpu", tokens=crossover - 1).name == "torch"
    assert plugins.choose("nn_backend", "auto", "cpu", tokens=12 * 16).name == "torch"  # the tiny test model's size


def test_auto_is_torch_where_faiss_is_not_installed(monkeypatch):
    monkeypatch.setattr(faiss_nn.FaissNearest, "unavailable_reason", lambda self: "needs faiss")
    assert plugins.choose("nn_backend", "auto", "cpu", tokens=1 << 20).name == "torch"


def test_a_plugin_choosing_by_device_alone_still_overrides():
    from vedit.plugins.hookspecs import hookimpl

    class Mine:
        name = "mine"

        def nearest(self, queries, keys):
            return torch.zeros(len(queries), dtype=torch.long)

    class Plugin:
        @hookimpl
        def register_nn_backends(self, register):
            register(Mine())

        @hookimpl
        def choose_nn_backend(self, device):
            return "mine"

    plugins.get_plugin_manager().register(Plugin(), name="device-only")
    assert plugins.choose("nn_backend", "auto", "cpu", tokens=4096).name == "mine"
    assert plugins.choose("nn_backend", "auto", "cpu").name == "mine"


def test_blocked_nearest_neighbours_equal_one_matmul(monkeypatch):
    from vedit.method import attention
    from vedit_plugins.nn_backends import torch as torch_nn

    gen = torch.Generator().manual_seed(4)
    queries, keys = torch.randn(300, 16, generator=gen), torch.randn(70, 16, generator=gen)
    expected = (F.normalize(queries, dim=-1) @ F.normalize(keys, dim=-1).T).argmax(-1)
    monkeypatch.setattr(attention, "MAX_SCORES_PER_BLOCK", 70 * 7)
    assert torch.equal(torch_nn.cosine_nearest(queries, keys), expected)
    if plugins.registered("nn_backend")["faiss"].unavailable_reason() is None:
        assert torch.equal(plugins.get("nn_backend", "faiss").nearest(queries, keys), expected)
