"""Nearest-neighbour backend ``faiss``: exact cosine nearest neighbours by brute-force inner-product
search (``METRIC_INNER_PRODUCT``, k = 1) on L2-normalised features.

* **CUDA tensors are searched where they lie.** ``faiss.bfKnn`` (FAISS's GPU brute-force k-NN,
  which needs no index) is given the device pointers of the normalised torch tensors and writes
  its indices straight into a torch ``int64`` tensor on the same device: nothing goes through host
  memory. The work is ordered on PyTorch's current CUDA stream, so no synchronisation is needed
  either. One ``StandardGpuResources`` per device (its cuBLAS handle, streams and a bounded
  temporary-memory stack) is made on first use and kept by the backend for the whole process.
  fp32 features are searched in fp32, fp16 and bf16 ones in fp16 after normalising in fp32 (FAISS's
  GPU brute force takes fp32 or fp16 vectors everywhere; bf16 only in some builds and GPUs, and unit
  vectors lose nothing in fp16 that bf16 holds).
* **Elsewhere** (the CPU; MPS through host memory) ``faiss.knn`` with ``METRIC_INNER_PRODUCT``,
  the search an ``IndexFlatIP`` makes, runs on numpy views of the normalised fp32 tensors (no copy
  beyond the normalisation itself).

The indices equal the ``torch`` backend's except where two keys are equally similar to a query
up to rounding (``tests/plugins/test_nn_backends.py``).
"""

from __future__ import annotations

import importlib.util
import threading
import warnings
from typing import Any

import torch
import torch.nn.functional as F

from vedit.config import option_value
from vedit.plugins.hookspecs import hookimpl

# FAISS's temporary-memory stack per GPU. Its brute-force search double-buffers distance tiles of
# 512 queries × all keys in fp32 (for k = 1), 2·512·m·4 bytes: 16 MiB for TokenFlow's largest
# search at 512×512 (m = 4096 keys), so 128 MiB serves up to m = 32768 (1024×1024 and more)
# without FAISS falling back to cudaMalloc. FAISS's own default reserves up to 1.5 GiB, outside
# PyTorch's allocator, that the UNet would rather have.
TEMP_MEMORY_BYTES = 128 << 20


def _unit_rows(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Rows of ``x`` scaled to unit length (computed in fp32 at least), as a contiguous ``dtype`` tensor."""
    x = x.detach()
    work = x if x.dtype in (torch.float32, torch.float64) else x.float()
    return F.normalize(work, dim=-1).to(dtype).contiguous()


class FaissNearest:
    name = "faiss"
    description = (
        "exact cosine nearest neighbours with FAISS brute-force inner-product search "
        "(GPU tensors in place with faiss-gpu)"
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._resources: dict[int, Any] = {}  # CUDA device index -> faiss.StandardGpuResources
        self._warned_no_gpu = False

    def unavailable_reason(self) -> str | None:
        if importlib.util.find_spec("faiss") is None:
            return "needs faiss: pip install 'vedit[faiss]' (or faiss-gpu)"
        return None

    # search ----------------------------------------------------------------------------------
    def nearest(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Index in ``keys`` (m, d) of the most cosine-similar row for each row of ``queries`` (n, d),
        as ``torch.long`` on the queries' device."""
        import faiss  # heavy: imported only when used

        if queries.dim() != 2 or keys.dim() != 2 or queries.shape[1] != keys.shape[1]:
            raise ValueError(
                f"nearest: queries (n, d) and keys (m, d) must share d; "
                f"got {tuple(queries.shape)} and {tuple(keys.shape)}"
            )
        if keys.shape[0] == 0:
            raise ValueError("nearest: no keys to search")
        device = queries.device
        if queries.shape[0] == 0:
            return torch.empty(0, dtype=torch.long, device=device)
        if device.type == "cuda":
            if _has_gpu_search(faiss):
                index = device.index if device.index is not None else torch.cuda.current_device()
                return self._search_gpu(faiss, queries, keys.to(device), index)
            if not self._warned_no_gpu:
                self._warned_no_gpu = True
                from vedit.report import VeditWarning

                warnings.warn(
                    "nn backend 'faiss': this faiss has no GPU support (faiss-cpu), so CUDA features are "
                    "copied to the host and searched there; install faiss-gpu, or use "
                    f"{option_value('nn_backend', 'torch')}",
                    VeditWarning, stacklevel=2,
                )  # fmt: skip
        return self._search_host(faiss, queries, keys).to(device)

    def _search_host(self, faiss, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        # fp32 on the host: numpy views of these tensors are what faiss reads (no further copy).
        q = _unit_rows(queries.to("cpu"), torch.float32).numpy()
        k = _unit_rows(keys.to("cpu"), torch.float32).numpy()
        _, found = faiss.knn(q, k, 1, metric=faiss.METRIC_INNER_PRODUCT)
        return torch.from_numpy(found).view(-1)

    def _search_gpu(self, faiss, queries: torch.Tensor, keys: torch.Tensor, index: int) -> torch.Tensor:
        """bfKnn on CUDA device ``index`` reading the tensors' own device memory, writing the indices into
        a torch tensor there, ordered on PyTorch's current stream."""
        half = queries.dtype in (torch.float16, torch.bfloat16)
        dtype = torch.float16 if half else torch.float32
        kind = faiss.DistanceDataType_F16 if half else faiss.DistanceDataType_F32
        with _cuda_scope(index):
            q = _unit_rows(queries, dtype)
            k = _unit_rows(keys, dtype)
            n, d = q.shape
            found = torch.empty((n, 1), dtype=torch.long, device=q.device)
            distances = torch.empty((n, 1), dtype=torch.float32, device=q.device)  # required by bfKnn, unused

            params = faiss.GpuDistanceParams()
            params.metric = faiss.METRIC_INNER_PRODUCT
            params.k = 1
            params.dims = d
            params.vectors = faiss.cast_integer_to_void_ptr(k.data_ptr())
            params.vectorType = kind
            params.vectorsRowMajor = True
            params.numVectors = k.shape[0]
            params.queries = faiss.cast_integer_to_void_ptr(q.data_ptr())
            params.queryType = kind
            params.queriesRowMajor = True
            params.numQueries = n
            params.outDistances = faiss.cast_integer_to_float_ptr(distances.data_ptr())
            params.outIndices = faiss.cast_integer_to_void_ptr(found.data_ptr())
            params.outIndicesType = faiss.IndicesDataType_I64
            params.device = index
            # FAISS's own GEMM + k-selection kernels in every build (a cuVS build would otherwise
            # hand fp32 searches to cuVS, and one without cuVS refuses the flag).
            for flag in ("use_cuvs", "use_raft"):
                if hasattr(params, flag):
                    setattr(params, flag, False)
            if hasattr(params, "ignoreOutDistances"):
                params.ignoreOutDistances = True

            resources = self._gpu_resources(faiss, index)
            stream = faiss.cast_integer_to_cudastream_t(_cuda_stream(q.device))
            with self._lock:  # the resources' default stream is shared state
                previous = resources.getDefaultStream(index)
                resources.setDefaultStream(index, stream)
                try:
                    faiss.bfKnn(resources, params)
                finally:
                    resources.setDefaultStream(index, previous)
        # q, k and distances are freed after this on the same stream, after the search in stream order.
        return found.view(-1)

    def _gpu_resources(self, faiss, index: int):
        """The ``StandardGpuResources`` of CUDA device ``index``: made once, then reused."""
        resources = self._resources.get(index)
        if resources is None:
            with self._lock:
                resources = self._resources.get(index)
                if resources is None:
                    resources = faiss.StandardGpuResources()
                    resources.setTempMemory(TEMP_MEMORY_BYTES)
                    self._resources[index] = resources
        return resources


def _cuda_scope(index: int):
    """Make CUDA device ``index`` current for the block (tensors made there land on it)."""
    return torch.cuda.device(index)


def _cuda_stream(device: torch.device) -> int:
    """The ``cudaStream_t`` of PyTorch's current stream on ``device``, as an integer."""
    return torch.cuda.current_stream(device).cuda_stream


def _has_gpu_search(faiss) -> bool:
    if not all(hasattr(faiss, name) for name in ("bfKnn", "StandardGpuResources", "GpuDistanceParams")):
        return False
    try:
        return faiss.get_num_gpus() > 0
    except Exception:
        return False


# One backend for the whole process: registries are rebuilt on every request, and the GPU
# resources it holds must outlive them.
BACKEND = FaissNearest()


@hookimpl
def register_nn_backends(register):
    register(BACKEND)
