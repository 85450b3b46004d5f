"""Loading a Stable Diffusion from the hub or a local folder, or building it in code.

``load_model(spec)`` understands three kinds of spec:

- ``tiny``, ``random:sd15`` and ``random:sd21``, with ``@N`` for weights drawn from seed N
  (``tiny@3``): built in code (:mod:`vedit.model.builders`);
- a local diffusers folder (``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
  ``scheduler/``, as ``save_pretrained`` writes them);
- a single-file checkpoint in the original layout (``.safetensors``, ``.ckpt``...), with the configs
  vedit ships or a ``model_config`` folder (:mod:`vedit.model.single_file`);
- anything else is a Hugging Face hub id (read from the local cache when ``HF_HUB_OFFLINE``
  is set).

Whatever the spec, sampling uses a fresh DDIM scheduler built from the model's own scheduler
config, and every module is in eval mode with gradients off.

A model's fingerprint names what was loaded (the hub commit, a hash of a folder's files, or the
built spec's architecture and seed); models vedit cannot run are refused with one line.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..config import DEFAULT_MODEL, option_label, option_value
from ..errors import ModelError
from ..method.prediction import check_prediction_type
from .adapters import apply_adapters
from .builders import SPEC_HELP, build_model, build_tokenizer, built_spec, scheduler_config
from .device import (
    dtype_name,
    is_out_of_memory,
    place_for_inference,
    resolve_device,
    resolve_dtype,
    use_fast_float32,
    vae_dtype_for,
)
from .single_file import (
    CHECKPOINT_SUFFIXES,
    config_folder,
    first_line,
    is_checkpoint_file,
    load_single_file,
    refuse_stray_config,
    scheduler_of,
    tokenizer_of,
)
from .stable_diffusion import COMPONENTS, SECOND_ENCODER, StableDiffusion

if TYPE_CHECKING:
    from diffusers import DDIMScheduler


def peek_scheduler(
    spec: str = DEFAULT_MODEL, revision: str | None = None, model_config: str | None = None
) -> DDIMScheduler | None:
    """The model's DDIM scheduler from its config file alone (no weights), or None if not at hand.

    Lets option combinations be checked against the model's real schedule before loading it.
    """
    from diffusers import DDIMScheduler

    spec = str(spec).strip()
    if built_spec(spec) is not None:
        return DDIMScheduler.from_config(scheduler_config(spec))
    try:
        path = Path(spec).expanduser()
        if is_checkpoint_file(path):
            return scheduler_of(path, config_folder(model_config))
        if path.is_dir():
            config_file = path / "scheduler" / "scheduler_config.json"
        else:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(spec, "scheduler/scheduler_config.json", revision=revision)
            if not isinstance(cached, str):
                return None
            config_file = Path(cached)
        return DDIMScheduler.from_config(json.loads(config_file.read_text(encoding="utf-8")))
    except Exception:  # unreadable or not there: loading the model will say what is wrong
        return None


def peek_tokenizer(spec: str = DEFAULT_MODEL, revision: str | None = None, model_config: str | None = None) -> Any:
    """The model's (first) tokenizer without its weights, or None if not at hand: what lets an embedding's token
    be checked against the vocabulary before the model loads."""
    from transformers import CLIPTokenizer

    spec = str(spec).strip()
    try:
        if built_spec(spec) is not None:
            return build_tokenizer()
        path = Path(spec).expanduser()
        if is_checkpoint_file(path):
            return tokenizer_of(path, config_folder(model_config))
        if path.is_dir():
            return CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", local_files_only=True)
        revision_given = {"revision": revision} if revision else {}
        return CLIPTokenizer.from_pretrained(spec, subfolder="tokenizer", local_files_only=True, **revision_given)
    except Exception:  # not at hand: the check is made after loading instead
        return None


def load_model(
    spec: str = DEFAULT_MODEL,
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype | None = "auto",
    revision: str | None = None,
    seed: int | None = None,
    model_config: str | None = None,
    lora: Sequence[str] = (),
    embeddings: Sequence[str] = (),
    warn: Callable[[str], None] | None = None,
) -> StableDiffusion:
    """Load (or, for ``tiny`` and ``random:*``, build from the seed the spec names) a Stable Diffusion model.

    ``model_config``: a folder of diffusers configs for a single-file checkpoint, overriding those of
    the family recognised from its weights. ``lora`` (``FILE_OR_ID[:SCALE]`` each) are fused into its
    weights and ``embeddings`` (``FILE[:TOKEN]``) added to its tokenizer, in order
    (:mod:`vedit.model.adapters`); ``warn`` hears what did not apply.

    ``seed`` is deprecated: it gives a built spec written without ``@N`` its weights' seed, as
    ``tiny@N`` does.
    """
    spec = str(spec).strip()
    built = built_spec(spec)
    if seed is not None:
        warnings.warn(
            "load_model(seed=N) is deprecated: the weights' seed is part of the spec, as in 'tiny@N'",
            DeprecationWarning,
            stacklevel=2,
        )
        if built is not None and "@" not in spec:
            built = built_spec(f"{spec}@{seed}")
    refuse_stray_config(spec, model_config)
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    use_fast_float32(device)
    try:
        if built is not None:
            model = build_model(built, device, dtype)
        elif is_checkpoint_file(spec):
            route_library_logs()
            model = load_single_file(Path(spec).expanduser().resolve(), model_config, device, dtype)
        else:
            model = _load_pretrained(spec, device, dtype, revision)
    except Exception as error:
        if not is_out_of_memory(error):
            raise
        _release_memory()
        raise ModelError(
            f"not enough memory on {device} for '{spec}' in {dtype_name(dtype)}: {_loading_hint(device, dtype)}"
        ) from None
    check_compatible(model)
    if lora or embeddings:
        apply_adapters(model, lora, embeddings, warn)
    return model


def _loading_hint(device: torch.device, dtype: torch.dtype) -> str:
    """What lets the weights fit: half precision where the device runs it (bf16 on the CPU, which
    has no fp16), else less of everything else. The working size does not change the weights."""
    others = "close other programs using it"
    if dtype != torch.float32:
        return others
    half = "bf16" if device.type == "cpu" else "fp16"
    return f"try {option_value('dtype', half)} (half the memory) or {others}"


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def check_compatible(model: StableDiffusion) -> None:
    """Refuse models whose shape or objective the rest of vedit does not handle."""
    name = model.model_id
    if model.vae_scale_factor != 8:
        raise ModelError(
            f"model '{name}' has a VAE that scales by {model.vae_scale_factor}, "
            "not 8: vedit needs a Stable Diffusion 1.x/2.x VAE"
        )
    if model.unet.config.in_channels != 4 or model.unet.config.out_channels != 4:
        raise ModelError(
            f"model '{name}' has a UNet with {model.unet.config.in_channels} input "
            "channels (an inpainting or depth model?): vedit needs a text-to-image "
            "model with 4"
        )
    model.family.check(model)
    check_prediction_type(model.scheduler, name)


# ----------------------------------------------------------------------------- from_pretrained


class _CurrentStderr:
    """A stream that writes to whatever ``sys.stderr`` is now, not to the one of the first import."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def route_library_logs() -> None:
    """diffusers and transformers bind their log handler to ``sys.stderr`` when first imported; an
    embedding application (or a test runner) may have swapped and closed that stream since."""
    import logging

    for name in ("diffusers", "transformers"):
        for handler in logging.getLogger(name).handlers:
            if type(handler) is logging.StreamHandler and not isinstance(handler.stream, _CurrentStderr):
                handler.stream = _CurrentStderr()  # not setStream: it flushes the old, maybe closed, one


def _load_pretrained(spec: str, device: torch.device, dtype: torch.dtype, revision: str | None) -> StableDiffusion:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    route_library_logs()

    folder = _local_folder(spec)
    source = str(folder) if folder else spec
    options: dict[str, Any] = {"local_files_only": folder is not None or _offline() or _fully_cached(spec, revision)}
    if not options["local_files_only"] and not _hub_reachable():
        # one quick probe instead of huggingface_hub's five logged retries per file (about 25 s)
        options["local_files_only"] = True
    if folder is None and revision:
        options["revision"] = revision
    # Weights go from the file straight to the device in their dtype (accelerate's empty-weights
    # loading): no random initialisation first, no full fp32 copy in host memory.
    placed = {"device_map": str(device)} if _can_place(device) else {}
    loaders = {
        "unet": lambda: UNet2DConditionModel.from_pretrained(
            source, subfolder="unet", torch_dtype=dtype, **placed, **options
        ),
        "vae": lambda: AutoencoderKL.from_pretrained(
            source, subfolder="vae", torch_dtype=_stored_vae_dtype(source, dtype, options), **placed, **options
        ),
        "text_encoder": lambda: CLIPTextModel.from_pretrained(
            source, subfolder="text_encoder", **{_transformers_dtype_keyword(): dtype}, **placed, **options
        ),
        "tokenizer": lambda: CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **options),
        "scheduler": lambda: DDIMScheduler.from_pretrained(source, subfolder="scheduler", **options),
    }
    index = _model_index(source, options)
    if "text_encoder_2" in index:  # SDXL's second text encoder
        loaders["text_encoder_2"] = lambda: CLIPTextModelWithProjection.from_pretrained(
            source, subfolder="text_encoder_2", **{_transformers_dtype_keyword(): dtype}, **placed, **options
        )
        loaders["tokenizer_2"] = lambda: CLIPTokenizer.from_pretrained(source, subfolder="tokenizer_2", **options)
    parts: dict[str, Any] = {}
    for name, load in loaders.items():
        try:
            with warnings.catch_warnings():
                # diffusers passes an argument that newer huggingface_hub versions ignore
                warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
                parts[name] = load()
        except Exception as error:
            if is_out_of_memory(error) or not is_load_error(error):
                raise
            if folder is None and isinstance(error, OSError):  # not in the cache, not on the hub
                raise ModelError(_hub_message(spec, revision, error)) from None
            where = f"model folder '{folder}'" if folder is not None else f"model '{spec}'"
            raise ModelError(f"could not read the {name} of {where}: {first_line(error)}") from None
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if name not in parts:
            continue
        wanted = vae_dtype_for(dtype, parts[name].config.force_upcast) if name == "vae" else dtype
        parts[name] = place_for_inference(parts[name], device, wanted)
    if folder is not None:
        model_id, revision, fingerprint = str(folder), None, _folder_fingerprint(folder)
    else:
        model_id, fingerprint = spec, _hub_fingerprint(spec, revision)
    return StableDiffusion(
        **parts, model_id=model_id, revision=revision, fingerprint=fingerprint, device=device, dtype=dtype,
        force_zeros_for_empty_prompt=bool(index.get("force_zeros_for_empty_prompt", True)),
    )  # fmt: skip


def _model_index(source: str, options: dict[str, Any]) -> dict[str, Any]:
    """The pipeline's ``model_index.json`` (which parts it has), or {} where it has none."""
    try:
        folder = Path(source)
        if folder.is_dir():
            path = folder / "model_index.json"
            return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        from huggingface_hub import hf_hub_download

        revision = {"revision": options["revision"]} if "revision" in options else {}
        cached = hf_hub_download(source, "model_index.json", local_files_only=options["local_files_only"], **revision)
        return json.loads(Path(cached).read_text(encoding="utf-8"))
    except Exception:  # no index: the five parts of SD 1.x/2.x, as before
        return {}


def _can_place(device: torch.device) -> bool:
    """Whether from_pretrained can load onto ``device`` directly (it needs accelerate)."""
    import importlib.util

    return device.type in ("cpu", "cuda") and importlib.util.find_spec("accelerate") is not None


def _stored_vae_dtype(source: str, dtype: torch.dtype, options: dict[str, Any]) -> torch.dtype:
    """The dtype to load the VAE in: :func:`vae_dtype_for` of its config (read before its weights)."""
    from diffusers import AutoencoderKL

    try:
        config = AutoencoderKL.load_config(source, subfolder="vae", **options)
    except Exception:  # loading the weights will say what is wrong
        return dtype
    return vae_dtype_for(dtype, bool(config.get("force_upcast", True)))


def _local_folder(spec: str) -> Path | None:
    """The folder ``spec`` names, or None when it is a hub id; a missing path is an error."""
    path = Path(spec).expanduser()
    if path.is_dir():
        folder = path.resolve()
        missing = [name for name in COMPONENTS if not (folder / name).is_dir()]
        if missing:
            listed = " and ".join(", ".join(f"{name}/" for name in missing).rsplit(", ", 1))
            raise ModelError(
                f"'{spec}' is not a diffusers model folder: it lacks {listed} "
                "(write one with save_pretrained, or pass a hub id)"
            )
        return folder
    if path.exists():
        raise ModelError(
            f"'{spec}' is neither a diffusers model folder (unet/, vae/, text_encoder/, tokenizer/, "
            f"scheduler/) nor a single-file checkpoint ({', '.join(CHECKPOINT_SUFFIXES)})"
        )
    looks_like_path = spec.startswith((".", "/", "~")) or "\\" in spec or spec.count("/") > 1 or spec.endswith("/")
    if looks_like_path:
        raise ModelError(
            f"model folder '{spec}' does not exist: pass "
            f"{option_value('model', 'PATH', placeholder=True)} to a local diffusers folder or a "
            f"Hugging Face hub id; {option_value('model', 'tiny')} runs offline"
        )
    if not is_hub_id(spec):
        raise ModelError(
            f"model '{spec}' is neither a folder nor a Hugging Face hub id (like '{DEFAULT_MODEL}'); {SPEC_HELP}"
        )
    return None


def is_hub_id(spec: str) -> bool:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(spec)
    except HFValidationError:
        return False
    return True


def _fully_cached(spec: str, revision: str | None) -> bool:
    """Whether every component's config of hub model ``spec`` is in the local hub cache at a pinned
    revision (none given, or a commit hash), so loading needs no request: each request to the hub
    costs a round trip per file, and without a network several retries before failing."""
    if revision is not None and not re.fullmatch(r"[0-9a-f]{40}", revision):
        return False  # a branch or tag may have moved on the hub since it was cached
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    files = [
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "tokenizer/tokenizer_config.json",
        "scheduler/scheduler_config.json",
    ]
    try:
        return all(isinstance(try_to_load_from_cache(spec, name, revision=revision), str) for name in files)
    except Exception:  # a malformed id: loading says what is wrong
        return False


HUB_PROBE_TIMEOUT = 10.0  # seconds to wait for the hub before treating it as unreachable


def _hub_reachable(timeout: float = HUB_PROBE_TIMEOUT) -> bool:
    """Whether the Hugging Face hub (``HF_ENDPOINT``) answers one HEAD request within ``timeout``.

    Any HTTP answer counts, an error status included: what the hub says about the model is for the
    loader to report. Only a failure to connect (no network, DNS, refused, timed out) is False.
    Proxies from the environment are used, as huggingface_hub uses them.
    """
    import urllib.error
    import urllib.request

    from huggingface_hub import constants

    request = urllib.request.Request(constants.ENDPOINT.rstrip("/") + "/api/models", method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):  # URLError, socket errors and timeouts; a malformed endpoint
        return False


def hub_unreachable() -> bool:
    """Whether hub files must come from the local cache alone: ``HF_HUB_OFFLINE``, or the hub not answering."""
    return _offline() or not _hub_reachable()


def _offline() -> bool:
    from huggingface_hub import constants

    setting = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return setting in ("1", "true", "yes", "on") or bool(constants.HF_HUB_OFFLINE)


def _transformers_dtype_keyword() -> str:
    import transformers

    major, minor = (int(part) for part in re.findall(r"\d+", transformers.__version__)[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def is_load_error(error: BaseException) -> bool:
    from safetensors import SafetensorError

    return isinstance(error, (OSError, ValueError, RuntimeError, SafetensorError, KeyError))


def _causes(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _hub_message(spec: str, revision: str | None, error: BaseException) -> str:
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    if not _offline():
        for cause in _causes(error):
            if isinstance(cause, GatedRepoError):
                return (
                    f"model '{spec}' is gated on the Hugging Face hub: accept its licence on "
                    "huggingface.co and log in with 'hf auth login'"
                )
            if isinstance(cause, RevisionNotFoundError):
                return (
                    f"model '{spec}' has no revision '{revision}': pass a branch, tag or "
                    f"commit that exists, or leave {option_label('revision')} out"
                )
            if isinstance(cause, RepositoryNotFoundError):
                return f"model '{spec}' was not found on the Hugging Face hub: check the id, or {_local_model()}"
    return (
        f"model weights for '{spec}' are not available (not in the Hugging Face cache and "
        f"the hub cannot be reached): download them with 'hf download {spec}' or {_local_model()}"
    )


def _local_model() -> str:
    """What to do without the hub's weights, naming the option as the user gives it."""
    return (
        f"pass {option_value('model', 'PATH', placeholder=True)} to a local diffusers folder; "
        f"{option_value('model', 'tiny')} runs offline"
    )


def _hub_fingerprint(spec: str, revision: str | None) -> str:
    """``id@commit`` when the cache tells which commit was loaded, else ``id@revision``."""
    from huggingface_hub import try_to_load_from_cache

    if revision and re.fullmatch(r"[0-9a-f]{40}", revision):
        return f"{spec}@{revision}"
    try:
        cached = try_to_load_from_cache(spec, "unet/config.json", revision=revision)
    except Exception:  # an id the cache cannot hold: fall back on the name
        cached = None
    if isinstance(cached, str):
        commit = Path(cached).parent.parent.name  # .../snapshots/<commit>/unet/config.json
        if re.fullmatch(r"[0-9a-f]{40}", commit):
            return f"{spec}@{commit}"
    return f"{spec}@{revision or 'main'}"


def _folder_fingerprint(folder: Path) -> str:
    """sha256 over (relative path, size, mtime_ns) of every file of the five components.

    Configs, tokenizer and scheduler files count too: changing any of them changes the outputs.
    """
    digest = hashlib.sha256()
    for name in COMPONENTS + SECOND_ENCODER:
        for path in sorted((folder / name).rglob("*")):
            relative = path.relative_to(folder)
            if any(part.startswith(".") for part in relative.parts) or not path.is_file():
                continue
            stat = path.stat()
            digest.update(f"{relative.as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return f"sha256:{digest.hexdigest()}"
