"""Flow backend ``raft``: torchvision's RAFT (Teed and Deng, ECCV 2020), from weights on this machine.

It never downloads: the weights are looked for where torchvision keeps them once fetched
(``$TORCH_HOME/hub/checkpoints``, the file name of ``Raft_Large_Weights.DEFAULT``) or at the file
``--raft-weights`` names (or, when it is not given, ``VEDIT_RAFT_WEIGHTS``): a state dict for
``raft_large``. Frames are scaled to [-1, 1] as the
weights' own transform does, padded by edge repetition to a multiple of 8 (and at least 128 px, for
RAFT's four-level correlation pyramid) and the flow cropped back. It runs on CUDA when there is
one, else on the CPU (slowly: about a second per 320x240 pair on two cores).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

import vedit
from vedit.plugins.hookspecs import hookimpl

WEIGHTS_ENV = "VEDIT_RAFT_WEIGHTS"
FLOW_UPDATES = 12  # refinement iterations; torchvision's default
BATCH = 4  # pairs per forward
MIN_SIDE = 128


def _pad_amount(side: int) -> int:
    return max(MIN_SIDE, -(-side // 8) * 8) - side


class RAFTFlow:
    name = "raft"
    description = "torchvision RAFT (large, C_T_SKHT_V2 weights), from weights already on this machine"

    class Options(vedit.Options):
        weights: str | None = vedit.option(
            None,
            help="RAFT weights file (a raft_large state dict; unset: $VEDIT_RAFT_WEIGHTS, else torchvision's cache).",
            path=True,
            affects_output=True,
        )

    def __init__(self) -> None:
        self._models: dict[str, object] = {}
        self._lock = threading.Lock()

    def weights_file(self) -> Path:
        options = getattr(self, "options", None)
        given = (options.weights if options is not None else None) or os.environ.get(WEIGHTS_ENV)
        if given:
            return Path(given).expanduser()
        import torch
        from torchvision.models.optical_flow import Raft_Large_Weights

        return Path(torch.hub.get_dir()) / "checkpoints" / Path(Raft_Large_Weights.DEFAULT.url).name

    def unavailable_reason(self) -> str | None:
        try:
            import torchvision.models.optical_flow  # noqa: F401
        except Exception as error:  # ImportError, or a torchvision built for another torch
            return (
                f"needs torchvision built for this torch: pip install 'vedit[raft]' ({type(error).__name__}: {error})"
            )
        path = self.weights_file()
        if not path.is_file():
            return (
                f"RAFT weights not found at {path}; fetch them once with torchvision "
                f"(raft_large(weights=Raft_Large_Weights.DEFAULT)) or give the file with --raft-weights"
            )
        return None

    def _model(self, device):
        key = str(device)
        with self._lock:
            if key not in self._models:
                import torch
                from torchvision.models.optical_flow import raft_large

                model = raft_large(weights=None, progress=False)
                state = torch.load(self.weights_file(), map_location="cpu", weights_only=True)
                model.load_state_dict(state)
                self._models[key] = model.eval().to(device)
            return self._models[key]

    def flow(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model = self._model(device)
        n, h, w = first.shape[:3]
        pad_w, pad_h = _pad_amount(w), _pad_amount(h)
        out = np.empty((n, h, w, 2), dtype=np.float32)

        def prepare(frames: np.ndarray) -> torch.Tensor:
            images = torch.from_numpy(np.ascontiguousarray(frames)).to(device).permute(0, 3, 1, 2).float()
            images = images / 127.5 - 1.0
            return F.pad(images, (0, pad_w, 0, pad_h), mode="replicate") if pad_w or pad_h else images

        with torch.inference_mode():
            for start in range(0, n, BATCH):
                stop = min(n, start + BATCH)
                flows = model(prepare(first[start:stop]), prepare(second[start:stop]), num_flow_updates=FLOW_UPDATES)[
                    -1
                ]
                out[start:stop] = flows[:, :, :h, :w].permute(0, 2, 3, 1).float().cpu().numpy()
        return out


@hookimpl
def register_flow_backends(register):
    register(RAFTFlow())
