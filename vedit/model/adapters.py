"""LoRAs fused into a model's weights and textual-inversion embeddings added to its tokenizer.

``--lora FILE_OR_ID[:SCALE]`` (repeatable): a LoRA in diffusers' layout (``unet.…lora_A.weight``, or peft's
keys without the ``unet.`` prefix) or kohya's/A1111's (``lora_unet_…lora_down.weight``, ``lora_te_…``, with
``.alpha``), read by diffusers' own loaders (:meth:`lora_state_dict` converts kohya's names) into peft layers,
merged into the weights at its scale and removed again, one LoRA after the other, so the model is a plain
UNet that every engine traces; ``W ← W + scale · (alpha / r) · B A``. Scale 0 leaves the weights as they were.

``--embedding FILE[:TOKEN]`` (repeatable): A1111's ``string_to_param`` (``.pt``) or ``emb_params``
(``.safetensors``), diffusers' ``{token: vector}`` (``learned_embeds``), or SDXL's ``{"clip_l": …,
"clip_g": …}``. An embedding of n vectors adds the tokens ``TOKEN``, ``TOKEN_1`` … ``TOKEN_{n-1}``;
:meth:`StableDiffusion.expand_prompt` writes a prompt's ``TOKEN`` out as all n of them.

Files are read as safetensors, or through torch's weights-only loader: nothing pickled that needs code
is ever run. After both, the model's fingerprint names every file by the sha256 of its content with its
scale or token, in order, so that every cache keyed on it (inversions, checkpoints, engines) tells the
adapted model from the base one.
"""

from __future__ import annotations

import contextlib
import functools
import pickle
import warnings
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..cache.checksums import file_sha256
from ..config import option_label, path_and_scale, path_and_suffix
from ..errors import ConfigError, ModelError
from .single_file import first_line
from .stable_diffusion import expand_prompt

if TYPE_CHECKING:
    from .stable_diffusion import StableDiffusion

PICKLED_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
DEFAULT_LORA_WEIGHT = "pytorch_lora_weights.safetensors"  # the file diffusers' save_lora_weights writes
_ADAPTER = "vedit"  # the name each LoRA has while it is loaded, between reading and merging
_LORA_MARKERS = ("lora_down", "lora_up", "lora_A", "lora_B", "lora.down", "lora.up", "_lora.down", "_lora.up")
_LORA_COMPONENTS = ("unet", "text_encoder", "text_encoder_2")  # the prefixes of diffusers' LoRA keys
_SDXL_ENCODERS = {"clip_l": "text_encoder", "clip_g": "text_encoder_2"}


@dataclass(frozen=True)
class LoraSpec:
    """One ``--lora`` value: the file or hub id as given and the scale it is fused at."""

    source: str
    scale: float


@dataclass(frozen=True)
class EmbeddingSpec:
    """One ``--embedding`` value: the file and the token prompts name it by (None: the file's own)."""

    path: str
    token: str | None


def parse_lora(text: str) -> LoraSpec:
    """``FILE_OR_ID[:SCALE]`` → its source and scale (1 when not given); a scale that is not a number is one line."""
    source, scale = path_and_scale(text.strip(), f"{option_label('lora')} {text!r}")
    return LoraSpec(source, 1.0 if scale is None else scale)


def parse_embedding(text: str) -> EmbeddingSpec:
    """``FILE[:TOKEN]`` → its file and token (None when not given)."""
    path, token = path_and_suffix(text.strip())
    if token is not None and not token.strip():
        raise ConfigError(f"{option_label('embedding')} {text!r}: the token after the colon is empty")
    if token is not None and any(character.isspace() for character in token):
        raise ConfigError(f"{option_label('embedding')} {text!r}: the token must be one word, got {token!r}")
    return EmbeddingSpec(path, token)


# ----------------------------------------------------------------------------- reading files


def lora_file(source: str) -> Path:
    """The file a LoRA source names: a local file or folder, or a hub id's weights in the local Hugging Face
    cache (never downloaded). A folder or ``ID`` gives its ``pytorch_lora_weights.safetensors`` (the file
    diffusers' ``save_lora_weights`` writes) or its only ``.safetensors`` file; ``ID/NAME.safetensors`` names
    the file."""
    path = Path(source).expanduser()
    if path.is_file():
        return path.resolve()
    if path.is_dir():
        return _weights_in(path.resolve(), f"LoRA folder '{source}'", f"{source}/FILE.safetensors")
    repo, weight = _hub_parts(source)
    if repo is None:
        raise ModelError(f"LoRA file '{source}' does not exist")
    snapshot = _cached_snapshot(repo)
    if snapshot is None:
        raise ModelError(
            f"LoRA '{source}' is neither a file nor a hub id in the local Hugging Face cache: "
            f"download it with 'hf download {repo}' or pass its .safetensors file"
        )
    if weight is not None:
        found = snapshot / weight
        if not found.is_file():
            raise ModelError(f"LoRA '{repo}' in the Hugging Face cache has no file '{weight}'")
        return found
    return _weights_in(snapshot, f"LoRA '{repo}' in the Hugging Face cache", f"{repo}/FILE.safetensors")


def _weights_in(folder: Path, what: str, naming: str) -> Path:
    """A folder's LoRA file: diffusers' ``pytorch_lora_weights.safetensors``, else its only ``.safetensors``."""
    if (folder / DEFAULT_LORA_WEIGHT).is_file():
        return folder / DEFAULT_LORA_WEIGHT
    candidates = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.safetensors"))
    if len(candidates) == 1:
        return folder / candidates[0]
    listed = ", ".join(candidates) or "none"
    raise ModelError(f"{what} holds {len(candidates)} .safetensors files ({listed}): name one as {naming}")


def _hub_parts(source: str) -> tuple[str | None, str | None]:
    """(repository id, weight file or None) of ``owner/name`` or ``owner/name/FILE.safetensors``."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    parts = source.split("/")
    if len(parts) < 2 or (Path(source).suffix.lower() in (".safetensors", *PICKLED_SUFFIXES) and len(parts) < 3):
        return None, None  # a LoRA's repository is owner/name; a file name alone is a file
    repo, weight = ("/".join(parts[:2]), "/".join(parts[2:])) if len(parts) > 2 else (source, None)
    try:
        validate_repo_id(repo)
    except HFValidationError:
        return None, None
    if weight is not None and not weight.endswith(".safetensors"):
        return None, None
    return repo, weight


def _cached_snapshot(repo: str) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo, local_files_only=True))
    except Exception:  # not in the cache (or no cache at all)
        return None


def read_weights(path: Path, what: str) -> tuple[dict[str, Any], dict[str, str]]:
    """A file's tensors and its safetensors metadata ({} for a pickled file), read without running any code.

    ``what`` names the file in errors ("LoRA", "embedding")."""
    if path.suffix.lower() != ".safetensors" and path.suffix.lower() not in PICKLED_SUFFIXES:
        raise ModelError(f"{what} {path} is neither .safetensors nor a .bin/.pt/.ckpt file")
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError, safe_open
        from safetensors.torch import load_file

        try:
            with safe_open(str(path), framework="pt") as opened:
                metadata = dict(opened.metadata() or {})
            return load_file(str(path)), metadata
        except (SafetensorError, OSError, ValueError) as error:
            raise ModelError(f"{what} {path} is not a readable safetensors file ({first_line(error)})") from None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Unsupported global" in str(error) or "Unsupported operand" in str(error):
            raise ModelError(
                f"{what} {path} is a pickle that needs code to load, which vedit never runs: "
                "convert it to .safetensors where you trust it"
            ) from None
        raise ModelError(f"{what} {path} is damaged or not a PyTorch file ({first_line(error)})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise ModelError(f"{what} {path} is damaged or not a PyTorch file ({first_line(error)})") from None
    if not isinstance(data, dict):
        raise ModelError(f"{what} {path} holds a {type(data).__name__}, not a dictionary of tensors")
    return data, {}


def check_adapters(lora: Sequence[str], embeddings: Sequence[str]) -> None:
    """Everything about ``--lora`` and ``--embedding`` that needs no model: the values parse, the files
    exist and hold LoRA weights or an embedding. One line for the first problem."""
    for text in lora:
        path = lora_file(parse_lora(text).source)
        _check_file("LoRA", path, path.stat().st_size, path.stat().st_mtime_ns)
    for text in embeddings:
        path = _embedding_file(parse_embedding(text).path)
        _check_file("embedding", path, path.stat().st_size, path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _check_file(what: str, path: Path, size: int, mtime_ns: int) -> None:
    """Read a LoRA or embedding file once per version (size and time of change): a batch checks every edit."""
    data = read_weights(path, what)[0]
    if what == "LoRA":
        _lora_tensors(data, path)
    else:
        _embedding_vectors(data, path)


# ----------------------------------------------------------------------------- LoRA


def _lora_tensors(state: dict[str, Any], path: Path) -> dict[str, torch.Tensor]:
    tensors = {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}
    if any("dora_scale" in key for key in tensors):  # diffusers' loaders would drop the magnitudes and go on
        raise ModelError(f"LoRA {path} is a DoRA (it has dora_scale weights), which vedit does not read")
    if not any(marker in key for key in tensors for marker in _LORA_MARKERS):
        raise ModelError(
            f"LoRA {path} holds no LoRA weights (no lora_down/lora_up or lora_A/lora_B keys): is it a checkpoint, "
            "an embedding, or a LyCORIS kind (LoHa, LoKr) that vedit does not read?"
        )
    return tensors


def _components(model: StableDiffusion) -> dict[str, torch.nn.Module]:
    """The modules a LoRA can adapt, by the prefix diffusers gives their keys."""
    found = {name: getattr(model, name, None) for name in _LORA_COMPONENTS}
    return {name: module for name, module in found.items() if module is not None}


def _loader(model: StableDiffusion) -> Any:
    """diffusers' LoRA loader for the model's layout: SDXL's reads kohya's two text encoders (te1, te2)."""
    from diffusers.loaders import StableDiffusionLoraLoaderMixin, StableDiffusionXLLoraLoaderMixin

    two_encoders = getattr(model, "text_encoder_2", None) is not None
    return StableDiffusionXLLoraLoaderMixin if two_encoders else StableDiffusionLoraLoaderMixin


def _peft_keys(name: str, part: dict[str, torch.Tensor], module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """One component's LoRA tensors in peft's naming (``<module path>.lora_A.weight``), as diffusers' loaders
    name them before injecting."""
    from diffusers.utils import (
        convert_state_dict_to_diffusers,
        convert_state_dict_to_peft,
        convert_unet_state_dict_to_peft,
    )
    from diffusers.utils.state_dict_utils import StateDictType

    if any("lora_A" in key for key in part):
        return part
    if name == "unet":
        return convert_unet_state_dict_to_peft(part)
    # diffusers tells its older naming (to_q_lora.down) by a to_out_lora key: a LoRA of some projections lacks one
    older = StateDictType.DIFFUSERS_OLD if any("_lora.down." in key for key in part) else None
    converted = convert_state_dict_to_peft(convert_state_dict_to_diffusers(part, original_type=older))
    if not hasattr(module, "text_model"):  # transformers' CLIPTextModel without its text_model level
        converted = {key.removeprefix("text_model."): value for key, value in converted.items()}
    return converted


def _fits(module: torch.nn.Module, path: str, down: torch.Tensor, up: torch.Tensor) -> bool:
    """Whether the layer ``path`` exists in ``module`` and takes a LoRA of these shapes."""
    try:
        layer = module.get_submodule(path)
    except AttributeError:
        return False
    weight = getattr(layer, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim != down.ndim or up.ndim != down.ndim:
        return False
    return down.shape[1] == weight.shape[1] and up.shape[0] == weight.shape[0]


@dataclass
class _LoraParts:
    """A LoRA file split by component, in peft's naming, with what did not fit this model."""

    parts: dict[str, dict[str, torch.Tensor]]  # component → its tensors that fit
    alphas: dict[str, float] | None
    metadata: dict[str, Any] | None
    modules: int  # LoRA modules in the file
    unmatched: list[str]  # those that fit no layer of this model


def _split_lora(model: StableDiffusion, path: Path) -> _LoraParts:
    import json

    state, file_metadata = read_weights(path, "LoRA")
    tensors = _lora_tensors(state, path)
    loader = _loader(model)
    with _quiet_libraries():
        try:  # the UNet's config maps kohya's SGM block names (input_blocks_4_1) to diffusers' (down_blocks.1)
            converted, alphas = loader.lora_state_dict(tensors, unet_config=model.unet.config)
        except (ValueError, KeyError, RuntimeError) as error:
            raise ModelError(f"LoRA {path} is in a layout vedit cannot read ({first_line(error)})") from None
    components = _components(model)
    if not any(key.split(".", 1)[0] in components for key in converted):
        converted = {f"unet.{key}": value for key, value in converted.items()}  # peft's keys, without a prefix
    raw_metadata = file_metadata.get("lora_adapter_metadata")
    metadata = json.loads(raw_metadata) if raw_metadata else None
    parts: dict[str, dict[str, torch.Tensor]] = {}
    modules = 0
    unmatched: list[str] = []
    for name, module in components.items():
        part = {key[len(name) + 1 :]: value for key, value in converted.items() if key.startswith(f"{name}.")}
        if not part:
            continue
        try:
            with _quiet_libraries():
                peft_part = _peft_keys(name, part, module)
        except (ValueError, KeyError) as error:
            raise ModelError(f"LoRA {path} is in a layout vedit cannot read ({first_line(error)})") from None
        fitting: dict[str, torch.Tensor] = {}
        for key in sorted(peft_part):
            if ".lora_A." not in key:
                continue
            layer = key.split(".lora_A.")[0]
            modules += 1
            up = peft_part.get(key.replace(".lora_A.", ".lora_B."))
            if up is None or not _fits(module, layer, peft_part[key], up):
                unmatched.append(f"{name}.{layer}")
                continue
            fitting.update({k: v for k, v in peft_part.items() if k.startswith(f"{layer}.lora_")})
        if fitting:
            parts[name] = fitting
    for name in sorted({key.split(".", 1)[0] for key in converted} - set(components)):  # a text encoder it lacks
        downs = [key for key in converted if key.startswith(f"{name}.") and (".lora_A." in key or ".down." in key)]
        modules += len(downs)
        unmatched += downs
    return _LoraParts(parts, alphas or None, None if alphas else metadata, modules, unmatched)


def fuse_lora(model: StableDiffusion, spec: LoraSpec, warn: Callable[[str], None]) -> Path:
    """Merge one LoRA into the model's weights at ``spec.scale`` and remove its layers again: diffusers'
    loaders inject it as peft layers, peft merges each (``W + scale · alpha/r · B A``). Returns its file.

    A LoRA that fits no layer of the model is an error; one that fits only some is a warning naming how many
    of its modules did not apply."""
    path = lora_file(spec.source)
    split = _split_lora(model, path)
    applied = sum(len({key.split(".lora_")[0] for key in part}) for part in split.parts.values())
    if not applied:
        raise ModelError(
            f"LoRA {path} fits no layer of model '{model.model_id}' (its layer names or shapes are another "
            "architecture's: a LoRA for SD 1.x, 2.x or SDXL works only with models of that family)"
        )
    if split.unmatched:
        warn(
            f"LoRA {path.name}: {len(split.unmatched)} of {split.modules} of its modules fit no layer of "
            f"model '{model.model_id}' and were not applied (first: {split.unmatched[0]})"
        )
    loader = _loader(model)
    components = _components(model)
    for name, part in split.parts.items():
        prefixed = {f"{name}.{key}": value for key, value in part.items()}
        with _quiet_libraries():
            if name == "unet":
                loader.load_lora_into_unet(
                    prefixed, split.alphas, components[name], adapter_name=_ADAPTER, metadata=split.metadata
                )
            else:
                loader.load_lora_into_text_encoder(
                    prefixed, split.alphas, components[name], prefix=name, adapter_name=_ADAPTER,
                    metadata=split.metadata,
                )  # fmt: skip
        _merge_and_remove(components[name], spec.scale)
    return path


def _merge_and_remove(module: torch.nn.Module, scale: float) -> None:
    """Merge the loaded adapter into ``module``'s weights at ``scale`` and take its peft layers out again."""
    from diffusers.utils import recurse_remove_peft_layers
    from peft.tuners.tuners_utils import BaseTunerLayer

    for layer in module.modules():
        if isinstance(layer, BaseTunerLayer):
            if scale != 1.0:
                layer.scale_layer(scale)
            layer.merge(adapter_names=[_ADAPTER])
    recurse_remove_peft_layers(module)
    with contextlib.suppress(AttributeError):
        del module.peft_config
    if hasattr(module, "_hf_peft_config_loaded"):
        module._hf_peft_config_loaded = False


@contextlib.contextmanager
def _quiet_libraries() -> Iterator[None]:
    """diffusers' and peft's notes while loading (progress bars, what was skipped) are not for vedit's users:
    vedit counts and reports what did not apply itself."""
    import logging

    from transformers.utils import logging as transformers_logging

    loggers = [logging.getLogger(name) for name in ("diffusers", "peft", "transformers")]
    levels = [logger.level for logger in loggers]
    bars = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
        if bars:
            transformers_logging.enable_progress_bar()


# ----------------------------------------------------------------------------- embeddings


def _embedding_file(text: str) -> Path:
    path = Path(text).expanduser()
    if not path.is_file():
        what = "is a folder, not a file" if path.exists() else "does not exist"
        raise ModelError(f"embedding file '{text}' {what}")
    return path.resolve()


def _embedding_vectors(data: dict[str, Any], path: Path) -> tuple[str | None, dict[str, torch.Tensor]]:
    """The token an embedding file names (None if it names none) and its vectors (n, width): under
    ``""`` for one text encoder whichever fits, or per encoder (``text_encoder``, ``text_encoder_2``)."""
    if isinstance(data.get("string_to_param"), dict) and data["string_to_param"]:  # A1111 .pt
        name = data.get("name")
        vectors = next(iter(data["string_to_param"].values()))
        found: tuple[str | None, dict[str, Any]] = (name if isinstance(name, str) else None, {"": vectors})
    elif "emb_params" in data:  # A1111 .safetensors
        found = (None, {"": data["emb_params"]})
    elif set(data) & set(_SDXL_ENCODERS):  # SDXL: one set of vectors per text encoder
        found = (None, {_SDXL_ENCODERS[key]: value for key, value in data.items() if key in _SDXL_ENCODERS})
    elif len(data) == 1:  # diffusers' learned_embeds: {token: vector}
        token, vectors = next(iter(data.items()))
        found = (str(token), {"": vectors})
    else:
        raise ModelError(
            f"embedding {path} is not a textual-inversion embedding (expected string_to_param, emb_params, "
            "clip_l/clip_g or a single {token: vector})"
        )
    token, by_encoder = found
    checked: dict[str, torch.Tensor] = {}
    for encoder, vectors in by_encoder.items():
        if not isinstance(vectors, torch.Tensor) or vectors.ndim not in (1, 2) or not vectors.is_floating_point():
            raise ModelError(f"embedding {path} holds no vectors of floating-point numbers")
        checked[encoder] = vectors.reshape(-1, vectors.shape[-1])  # (n, width)
    return token, checked


def check_embedding_tokens(embeddings: Sequence[str], vocabulary: Collection[str]) -> None:
    """ConfigError for the first embedding whose tokens are in ``vocabulary`` (the model's tokenizer's) or are
    an earlier embedding's: what :func:`add_embedding` refuses after loading, found before it."""
    taken = set(vocabulary)
    for text in embeddings:
        spec = parse_embedding(text)
        path = _embedding_file(spec.path)
        _, by_encoder = _embedding_vectors(read_weights(path, "embedding")[0], path)
        token = embedding_token(spec, path)
        tokens = multi_vector_tokens(token, next(iter(by_encoder.values())).shape[0])
        clash = [name for name in tokens if name in taken]
        if clash:
            raise _token_taken(path, token, clash[0])
        taken.update(tokens)


def _token_taken(path: Path, token: str, taken: str) -> ConfigError:
    return ConfigError(
        f"{option_label('embedding')} {path.name}: the token {taken!r} is already in the model's "
        f"tokenizer: give the embedding another after a colon ({path.name}:<{token.strip('<>')}-1>)"
    )


def embedding_token(spec: EmbeddingSpec, path: Path) -> str:
    """The token an embedding is added under: the one given, else the one its file names, else the file's stem."""
    return spec.token or _embedding_vectors(read_weights(path, "embedding")[0], path)[0] or path.stem


def _encoder_widths(model: StableDiffusion) -> dict[str, int]:
    encoders = {name: getattr(model, name, None) for name in ("text_encoder", "text_encoder_2")}
    return {name: int(e.get_input_embeddings().weight.shape[1]) for name, e in encoders.items() if e is not None}


def add_embedding(model: StableDiffusion, spec: EmbeddingSpec) -> tuple[Path, str]:
    """Add one embedding's tokens to the model's tokenizers and its vectors to their text encoders.
    Returns its file and token."""
    path = _embedding_file(spec.path)
    _, by_encoder = _embedding_vectors(read_weights(path, "embedding")[0], path)
    token = embedding_token(spec, path)
    widths = _encoder_widths(model)
    if "" in by_encoder:
        vectors = by_encoder.pop("")
        fitting = [name for name, width in widths.items() if width == vectors.shape[1]]
        if not fitting:
            listed = " and ".join(str(width) for width in widths.values())
            raise ModelError(
                f"embedding {path} has {vectors.shape[1]}-wide vectors; this model's text encoders take {listed}: "
                "it was made for another model family"
            )
        by_encoder = {fitting[0]: vectors}
    missing = [name for name in widths if name not in by_encoder]
    if missing and len(widths) > 1:
        raise ModelError(
            f"embedding {path} has vectors for {len(by_encoder)} of this model's {len(widths)} text encoders; "
            "an SDXL embedding holds clip_l and clip_g"
        )
    counts = {vectors.shape[0] for vectors in by_encoder.values()}
    if len(counts) != 1:
        raise ModelError(f"embedding {path} has a different number of vectors per text encoder")
    tokens = multi_vector_tokens(token, counts.pop())
    for encoder, vectors in by_encoder.items():
        if vectors.shape[1] != widths[encoder]:
            raise ModelError(
                f"embedding {path} has {vectors.shape[1]}-wide vectors for a text encoder that takes {widths[encoder]}"
            )
        tokenizer = getattr(model, "tokenizer" + encoder.removeprefix("text_encoder"))
        taken = [name for name in tokens if name in tokenizer.get_vocab()]
        if taken:
            raise _token_taken(path, token, taken[0])
    for encoder, vectors in by_encoder.items():
        tokenizer = getattr(model, "tokenizer" + encoder.removeprefix("text_encoder"))
        text_encoder = getattr(model, encoder)
        tokenizer.add_tokens(tokens)
        ids = tokenizer.convert_tokens_to_ids(tokens)
        _resize_token_table(text_encoder, len(tokenizer))
        table = text_encoder.get_input_embeddings().weight
        with torch.no_grad():
            table[ids] = vectors.to(table.device, table.dtype)
    if len(tokens) > 1:
        model.embedding_tokens = {**model.embedding_tokens, token: tokens}
    return path, token


def _resize_token_table(text_encoder: Any, size: int) -> None:
    """Grow the text encoder's token table to ``size`` rows. The new rows are overwritten with the embedding's
    vectors: what transformers draws for them (announcing it) must not move torch's global generator, from
    which a caller's own random numbers come."""
    import inspect

    resize = text_encoder.resize_token_embeddings
    undrawn = {"mean_resizing": False} if "mean_resizing" in inspect.signature(resize).parameters else {}
    device = text_encoder.get_input_embeddings().weight.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        resize(size, **undrawn)


def multi_vector_tokens(token: str, count: int) -> list[str]:
    """The tokens an embedding of ``count`` vectors adds: ``token``, ``token_1`` … ``token_{count-1}``."""
    return [token] + [f"{token}_{index}" for index in range(1, count)]


# ----------------------------------------------------------------------------- both


def apply_adapters(
    model: StableDiffusion,
    lora: Sequence[str] = (),
    embeddings: Sequence[str] = (),
    warn: Callable[[str], None] | None = None,
) -> StableDiffusion:
    """Fuse the LoRAs into ``model`` and add the embeddings, in order; its fingerprint then names each file's
    content (sha256) with its scale or token, so that nothing cached for another set of adapters is reused."""
    if warn is None:
        from ..report import VeditWarning

        def warn(text: str) -> None:
            warnings.warn(text, VeditWarning, stacklevel=3)

    for text in lora:
        fuse_lora(model, parse_lora(text), warn)
    for text in embeddings:
        add_embedding(model, parse_embedding(text))
    model.fingerprint += adapters_fingerprint(lora, embeddings)
    return model


def adapters_fingerprint(lora: Sequence[str] = (), embeddings: Sequence[str] = ()) -> str:
    """What the LoRAs and embeddings add to a model's fingerprint, known before the model loads: for each, in
    order, the sha256 of its file's content (16 hex digits) with its scale or token
    (``+lora:e54e7be6154481ac*0.8+embedding:c810aa5fa2f8a0df=<toy>``)."""
    parts = []
    for text in lora:
        spec = parse_lora(text)
        parts.append(f"+lora:{file_sha256(lora_file(spec.source))[:16]}*{spec.scale!r}")
    for text in embeddings:
        spec = parse_embedding(text)
        path = _embedding_file(spec.path)
        parts.append(f"+embedding:{file_sha256(path)[:16]}={embedding_token(spec, path)}")
    return "".join(parts)


__all__ = [
    "EmbeddingSpec",
    "LoraSpec",
    "adapters_fingerprint",
    "add_embedding",
    "apply_adapters",
    "check_adapters",
    "embedding_token",
    "expand_prompt",
    "fuse_lora",
    "lora_file",
    "multi_vector_tokens",
    "parse_embedding",
    "parse_lora",
    "read_weights",
]
