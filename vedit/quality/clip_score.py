"""CLIP scores of a clip: how well its frames match a prompt, and how alike consecutive frames are.

A CLIP model is read from this machine only: a folder written by ``save_pretrained`` (the model's
``config.json`` and weights, its tokenizer files and ``preprocessor_config.json``) or a Hugging Face
hub id whose files are all in the local hub cache. Nothing is ever downloaded; a model that is not
here, or cannot be read, raises :class:`ClipUnavailable` with a one-line reason.

- **CLIP text score**: the mean over frames of the cosine between the prompt's text embedding and
  the frame's image embedding (the prompt cut to the model's context, 77 tokens for OpenAI's CLIP).
- **CLIP frame consistency**: the mean over consecutive pairs of the cosine between the two
  frames' image embeddings; identical frames give exactly 1.

Frames go through the model in batches of :data:`IMAGE_BATCH` as they come (:class:`FrameScores`),
so a clip of any length costs one batch of memory. It runs on CUDA when there is one (fp16), else
on the CPU in fp32; embeddings are L2-normalised in float64 either way.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import option_label, option_value
from ..errors import ModelError

DEFAULT_CLIP = "openai/clip-vit-large-patch14"
IMAGE_BATCH = 16  # frames embedded per forward

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"))


class ClipUnavailable(ModelError):
    """No usable CLIP model here: ``reason`` says why, in one line."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0][:200] if lines else type(error).__name__


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or "\\" in spec or spec.count("/") > 1 or spec.endswith("/")


def _missing_files(has: Any) -> list[str]:
    """What a CLIP model lacks, given ``has(name) -> bool`` for its files."""
    missing = [name for name in ("config.json", "preprocessor_config.json") if not has(name)]
    if not any(has(name) for name in _WEIGHT_FILES):
        missing.append(" or ".join(_WEIGHT_FILES))
    if not any(all(has(name) for name in group) for group in _TOKENIZER_FILES):
        missing.append("tokenizer.json (or vocab.json and merges.txt)")
    return missing


def _hub_has(spec: str, name: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(spec, name), str)


def unavailable_reason(spec: str | None) -> str | None:
    """Why CLIP model ``spec`` (hub id or folder) cannot be loaded here, or None when it can.

    A cheap check of which files are present (nothing is read or loaded): a hub id counts only
    when every file it needs is in the local hub cache.
    """
    if not spec:
        return f"no CLIP model given ({option_label('clip')})"
    path = Path(spec).expanduser()
    if path.is_dir():
        missing = _missing_files(lambda name: (path / name).is_file())
        if missing:
            return f"CLIP folder '{spec}' is not a saved CLIP model: it lacks {', '.join(missing)}"
        return None
    if path.exists():
        return f"{option_label('clip')} '{spec}' is a file; give a folder written by save_pretrained or a hub id"
    if _looks_like_path(spec):
        return f"CLIP folder '{spec}' does not exist"
    try:
        from huggingface_hub.errors import HFValidationError
        from huggingface_hub.utils import validate_repo_id

        validate_repo_id(spec)
    except HFValidationError:
        return f"{option_label('clip')} '{spec}' is neither a folder nor a Hugging Face hub id"
    except ImportError:
        return "huggingface_hub is not installed"
    try:
        missing = _missing_files(lambda name: _hub_has(spec, name))
    except Exception as error:  # a cache that cannot be read
        return f"cannot read the Hugging Face cache for '{spec}': {_one_line(error)}"
    if missing:
        return (
            f"CLIP model '{spec}' is not in the local Hugging Face cache (vedit never downloads it; "
            f"fetch it once with 'hf download {spec}', or pass {option_value('clip', 'FOLDER', placeholder=True)})"
        )
    return None


def _image_processor_class() -> Any:
    """``CLIPImageProcessor``; where transformers would swap it for its PIL twin (no torchvision),
    that twin is taken directly, without the warning the swap prints."""
    import transformers

    if importlib.util.find_spec("torchvision") is None and hasattr(transformers, "CLIPImageProcessorPil"):
        return transformers.CLIPImageProcessorPil
    return transformers.CLIPImageProcessor


@dataclass(eq=False)
class ClipScorer:
    """A loaded CLIP model with its tokenizer and image processor, on one device."""

    model: Any = field(repr=False)
    tokenizer: Any = field(repr=False)
    processor: Any = field(repr=False)
    name: str
    device: Any
    dtype: Any
    batch_size: int = IMAGE_BATCH

    @property
    def max_tokens(self) -> int:
        """Tokens the text tower reads (start and end tokens included)."""
        limit = int(self.model.config.text_config.max_position_embeddings)
        tokenizer_limit = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < limit:
            limit = tokenizer_limit
        return limit

    def prompt_tokens(self, text: str) -> int:
        """Tokens ``text`` takes before any cut (start and end tokens included)."""
        return len(self.tokenizer(text, truncation=False, verbose=False)["input_ids"])

    def embed_text(self, text: str) -> np.ndarray:
        """The prompt's text embedding (d,), float64, unit length; cut to :attr:`max_tokens`."""
        import torch

        tokens = self.tokenizer(text, truncation=True, max_length=self.max_tokens, return_tensors="pt")
        with torch.inference_mode():
            output = self.model.text_model(
                input_ids=tokens["input_ids"].to(self.device),
                attention_mask=tokens["attention_mask"].to(self.device) if "attention_mask" in tokens else None,
            )
            embedding = self.model.text_projection(output.pooler_output)
        return _normalised(embedding.float().cpu().numpy())[0]

    def embed_images(self, frames: np.ndarray | list[np.ndarray]) -> np.ndarray:
        """Image embeddings (n, d), float64, unit length, of uint8 RGB frames (H, W, 3) each; at
        most :attr:`batch_size` frames go through the model at once."""
        import torch

        frames = list(frames)
        out: list[np.ndarray] = []
        for start in range(0, len(frames), self.batch_size):
            batch = [np.ascontiguousarray(frame) for frame in frames[start : start + self.batch_size]]
            pixels = self.processor(images=batch, return_tensors="pt")["pixel_values"]
            with torch.inference_mode():
                output = self.model.vision_model(pixel_values=pixels.to(self.device, self.dtype))
                embedding = self.model.visual_projection(output.pooler_output)
            out.append(_normalised(embedding.float().cpu().numpy()))
        if not out:
            return np.zeros((0, int(self.model.config.projection_dim)), np.float64)
        return np.concatenate(out)


def _normalised(vectors: np.ndarray) -> np.ndarray:
    """Unit-length rows, in float64 so that a vector's cosine with itself is 1 to 1e-15."""
    vectors = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, np.finfo(np.float64).tiny)


@contextmanager
def _quiet_loading() -> Iterator[None]:
    """No progress bars from transformers while loading (vedit shows its own progress)."""
    from transformers.utils import logging as transformers_logging

    shown = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            transformers_logging.enable_progress_bar()


def load_clip(spec: str = DEFAULT_CLIP, device: Any = None) -> ClipScorer:
    """Load CLIP model ``spec`` (hub id or folder) from this machine only.

    Raises :class:`ClipUnavailable` when it is not here or cannot be read."""
    reason = unavailable_reason(spec)
    if reason:
        raise ClipUnavailable(reason)
    import torch

    try:
        from transformers import AutoTokenizer, CLIPModel
    except ImportError as error:
        raise ClipUnavailable(f"transformers cannot load CLIP here: {_one_line(error)}") from None
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    path = Path(spec).expanduser()
    source = str(path.resolve()) if path.is_dir() else spec
    try:
        with _quiet_loading():
            model = CLIPModel.from_pretrained(source, local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
            processor = _image_processor_class().from_pretrained(source, local_files_only=True)
    except Exception as error:
        if type(error).__name__ == "OutOfMemoryError" or isinstance(error, MemoryError):
            raise
        raise ClipUnavailable(f"could not load CLIP model '{spec}': {_one_line(error)}") from None
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return ClipScorer(model=model, tokenizer=tokenizer, processor=processor, name=spec, device=device, dtype=dtype)


@dataclass
class ClipFigures:
    """One clip's CLIP figures: per-frame text cosines and per-pair frame cosines."""

    text_frames: list[float] = field(default_factory=list)  # empty without a prompt
    # pair t: frames t and t+1; NaN for a pair of a repeated source frame, which is not measured
    consistency_pairs: list[float] = field(default_factory=list)

    @property
    def text_score(self) -> float | None:
        """Mean cosine of the prompt with each frame (None without a prompt)."""
        return float(np.mean(self.text_frames)) if self.text_frames else None

    @property
    def frame_consistency(self) -> float | None:
        """Mean cosine of consecutive frames over the pairs measured (None when there are none)."""
        measured = [v for v in self.consistency_pairs if not math.isnan(v)]
        return float(np.mean(measured)) if measured else None


class FrameScores:
    """Accumulates :class:`ClipFigures` from frames fed one at a time, in clip order.

    Frames wait in a batch of ``scorer.batch_size``; only the last embedding is kept between
    batches, for the next pair's cosine. The pairs (t, t + 1) in ``repeated_pairs`` are of one
    source frame shown twice: they are not measured (a source's would be exactly 1)."""

    def __init__(
        self, scorer: ClipScorer, text_embedding: np.ndarray | None = None, repeated_pairs: Collection[int] = ()
    ):
        self.scorer = scorer
        self.text = text_embedding
        self.repeated_pairs = frozenset(repeated_pairs)
        self.figures = ClipFigures()
        self._pending: list[np.ndarray] = []
        self._last: np.ndarray | None = None

    def add(self, frame: np.ndarray) -> None:
        self._pending.append(frame)
        if len(self._pending) >= self.scorer.batch_size:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        embeddings = self.scorer.embed_images(self._pending)
        self._pending = []
        if self.text is not None:
            self.figures.text_frames.extend(float(v) for v in np.clip(embeddings @ self.text, -1.0, 1.0))
        if self._last is not None:
            embeddings_with_last = np.concatenate([self._last[None], embeddings])
        else:
            embeddings_with_last = embeddings
        pairs = np.clip((embeddings_with_last[:-1] * embeddings_with_last[1:]).sum(axis=-1), -1.0, 1.0)
        first = len(self.figures.consistency_pairs)
        self.figures.consistency_pairs.extend(
            math.nan if first + i in self.repeated_pairs else float(v) for i, v in enumerate(pairs)
        )
        self._last = embeddings[-1]

    def finish(self) -> ClipFigures:
        self._flush()
        return self.figures


def score_frames(scorer: ClipScorer, frames: Iterable[np.ndarray], prompt: str | None = None) -> ClipFigures:
    """CLIP text score (with ``prompt``) and frame consistency of ``frames``, streamed."""
    scores = FrameScores(scorer, scorer.embed_text(prompt) if prompt else None)
    for frame in frames:
        scores.add(np.asarray(frame))
    return scores.finish()


__all__ = [
    "DEFAULT_CLIP",
    "IMAGE_BATCH",
    "ClipFigures",
    "ClipScorer",
    "ClipUnavailable",
    "FrameScores",
    "load_clip",
    "score_frames",
    "unavailable_reason",
]
