"""Single-file checkpoints: Stable Diffusion 1.x, 2.x and SDXL base weights in the original (LDM / SGM)
layout, as one ``.safetensors`` (or ``.ckpt``, ``.pt``, ``.pth``, ``.bin``) file.

The family is recognised from the checkpoint's keys and shapes (:func:`recognise`), its components are
converted by diffusers' single-file loaders against the diffusers configs vedit ships for that family
(``vedit/model/configs/<family>/``), or against those a ``--model-config`` folder gives, and CLIP's
tokenizer is made from the BPE vocabulary shipped beside them. Nothing is fetched from the hub and
nothing runs code: pickle-based files are read only by torch's weights-only loader.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..cache.files import cache_root, partial_prefix, sweep_partials
from ..config import option_label, option_value
from ..errors import ConfigError, ModelError
from .builders import CONFIGS, PROMPT_LENGTH, byte_symbols
from .device import place_for_inference, vae_dtype_for
from .stable_diffusion import StableDiffusion

if TYPE_CHECKING:
    from diffusers import DDIMScheduler
    from transformers import CLIPTokenizer

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
PICKLE_SUFFIXES = CHECKPOINT_SUFFIXES[1:]
FAMILIES = ("sd15", "sd21-base", "sd21-v", "sdxl-base")
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "text_encoder_2", "tokenizer_2")  # SDXL's last

# What the original layouts name their parts (the keys diffusers' converters read).
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIXES = ("first_stage_model.", "vae.")
CONV_IN = UNET_PREFIX + "input_blocks.0.0.weight"  # (channels, in_channels, 3, 3)
CLIP_KEY = "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"  # SD 1.x
OPEN_CLIP_KEY = "cond_stage_model.model.token_embedding.weight"  # SD 2.x
SDXL_CLIP_KEY = "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight"
SDXL_OPEN_CLIP_KEY = "conditioner.embedders.1.model.positional_embedding"
SDXL_REFINER_KEY = "conditioner.embedders.0.model.text_projection"
# The step the SD 2.x base checkpoints were saved at: diffusers' one sign of an epsilon SD 2.x file.
SD2_BASE_GLOBAL_STEP = 875000

BPE_VOCABULARY = CONFIGS / "bpe_simple_vocab_16e6.txt.gz"
BPE_MERGES = 49152 - 256 - 2  # CLIP's vocabulary: 512 byte symbols, these merges and two markers = 49408


def is_checkpoint_file(spec: str | os.PathLike) -> bool:
    """Whether ``spec`` names a file that is to be read as a single-file checkpoint."""
    path = Path(spec).expanduser()
    return path.is_file() and path.suffix.lower() in CHECKPOINT_SUFFIXES


@dataclass(frozen=True)
class Recognised:
    """What a checkpoint holds: its family and the facts the guess rests on."""

    family: str
    cross_attention_dim: int
    prediction_guessed: bool = False  # an SD 2.x file: epsilon or v cannot be read from its weights


# ----------------------------------------------------------------------------- reading the file


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], int | None]:
    """The tensors of a checkpoint file and the training step it records (None if it does not).

    ``.safetensors`` files are memory-mapped; pickle-based ones go through torch's weights-only
    unpickler (memory-mapped where they are zip archives), which builds tensors and plain values only.
    """
    if path.suffix.lower() == ".safetensors":
        return _read_safetensors(path), None
    return _read_pickle(path)


def read_shapes(path: Path) -> tuple[dict[str, torch.Tensor], int | None]:
    """What :func:`recognise` needs of a checkpoint, cheaply: a ``.safetensors`` file's header as
    tensors on the meta device (shapes, no data); a pickle-based file memory-mapped."""
    if path.suffix.lower() != ".safetensors":
        return _read_pickle(path)
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as opened:
            return {key: torch.empty(opened.get_slice(key).get_shape(), device="meta") for key in opened.keys()}, None
    except SafetensorError as error:
        raise ModelError(_corrupt(path, first_line(error))) from None
    except OSError as error:
        raise ModelError(f"checkpoint '{path}' cannot be read: {error.strerror or error}") from None


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except SafetensorError as error:
        raise ModelError(_corrupt(path, first_line(error))) from None
    except OSError as error:
        raise ModelError(f"checkpoint '{path}' cannot be read: {error.strerror or error}") from None


def _read_pickle(path: Path) -> tuple[dict[str, torch.Tensor], int | None]:
    import pickle

    try:
        content = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as error:
        needed = re.findall(r"GLOBAL ([\w.]+)", str(error))
        what = f" (a pickled '{needed[0]}')" if needed else ""
        raise ModelError(
            f"checkpoint '{path}' contains code{what}, which vedit never runs: use a .safetensors "
            "file of the same model (most models publish one)"
        ) from None
    except (RuntimeError, EOFError, ValueError) as error:
        raise ModelError(_corrupt(path, first_line(error))) from None
    except OSError as error:
        raise ModelError(f"checkpoint '{path}' cannot be read: {error.strerror or error}") from None
    while isinstance(content, dict) and isinstance(content.get("state_dict"), dict):
        step = content.get("global_step")
        content = content["state_dict"]
        if isinstance(step, int) and "global_step" not in content:
            content["global_step"] = step
    if not isinstance(content, dict):
        raise ModelError(f"checkpoint '{path}' holds a {type(content).__name__}, not a dictionary of weights")
    step = content.get("global_step")
    tensors = {key: value for key, value in content.items() if isinstance(value, torch.Tensor)}
    return tensors, step if isinstance(step, int) else None


def _corrupt(path: Path, detail: str) -> str:
    return f"checkpoint '{path}' is corrupt or truncated ({detail}): download it again"


def first_line(error: BaseException) -> str:
    """The first non-blank line of an error's text (a library's message can run to a page)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


# ----------------------------------------------------------------------------- recognising the family


def recognise(checkpoint: dict[str, torch.Tensor], global_step: int | None, name: str) -> Recognised:
    """The family of a checkpoint in the original layout, from its keys and shapes; one line if it is
    not a Stable Diffusion 1.x/2.x/SDXL base text-to-image checkpoint.

    SD 2.x's weights do not say whether the model predicts noise or v: as diffusers does, a file
    saved at the SD 2.x base checkpoints' step is epsilon and any other is taken for the 768-v model.
    """
    unet_keys = [key for key in checkpoint if key.startswith(UNET_PREFIX)]
    if not unet_keys or CONV_IN not in checkpoint:
        sample = ", ".join(sorted(checkpoint)[:3]) or "none"
        raise ModelError(
            f"'{name}' is not a Stable Diffusion checkpoint: it has no UNet weights "
            f"('{UNET_PREFIX}*', expected with 'first_stage_model.*' and 'cond_stage_model.*' or "
            f"'conditioner.embedders.*'); its first keys are {sample}"
        )
    in_channels = int(checkpoint[CONV_IN].shape[1])
    if in_channels != 4:
        raise ModelError(
            f"'{name}' has a UNet with {in_channels} input channels (an inpainting or depth model?): "
            "vedit needs a text-to-image model with 4"
        )
    if not any(key.startswith(VAE_PREFIXES) for key in checkpoint):
        raise ModelError(f"'{name}' has no VAE weights ('first_stage_model.*'): vedit needs a full checkpoint")
    attention = sorted(key for key in unet_keys if key.endswith("attn2.to_k.weight"))
    if not attention:
        raise ModelError(f"'{name}' has a UNet without cross-attention: it is no text-to-image Stable Diffusion")
    cross_attention_dim = int(checkpoint[attention[0]].shape[-1])
    guessed = False
    if SDXL_REFINER_KEY in checkpoint:
        raise ModelError(f"'{name}' is an SDXL refiner: vedit edits with base models (SDXL base, SD 1.x, SD 2.x)")
    if SDXL_OPEN_CLIP_KEY in checkpoint and SDXL_CLIP_KEY in checkpoint:
        family = "sdxl-base"
    elif OPEN_CLIP_KEY in checkpoint:
        guessed = global_step != SD2_BASE_GLOBAL_STEP
        family = "sd21-v" if guessed else "sd21-base"
    elif CLIP_KEY in checkpoint:
        family = "sd15"
    else:
        raise ModelError(
            f"'{name}' has no text encoder vedit recognises: expected 'cond_stage_model.transformer.*' "
            "(SD 1.x), 'cond_stage_model.model.*' (SD 2.x) or 'conditioner.embedders.0/1.*' (SDXL)"
        )
    return Recognised(family, cross_attention_dim, guessed)


def prediction_note(recognised: Recognised, name: str, model_config: Path | None) -> str | None:
    """The warning an SD 2.x file whose prediction type was guessed gets, unless a config says it."""
    if not recognised.prediction_guessed or (
        model_config is not None and (model_config / "scheduler" / "scheduler_config.json").is_file()
    ):
        return None
    return (
        f"'{name}' is an SD 2.x checkpoint, taken for the 768-v model (v-prediction) as diffusers takes it; "
        f"if it is an SD 2.x base (epsilon) model, pass {option_value('model_config', str(CONFIGS / 'sd21-base'))}"
    )


# ----------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class Configs:
    """Where each component's diffusers config comes from: the ``--model-config`` folder where it
    has that component, else the shipped folder of the recognised family."""

    family: str
    override: Path | None

    @property
    def components(self) -> tuple[str, ...]:
        return COMPONENTS if self.family == "sdxl-base" else COMPONENTS[:5]

    def folder(self, component: str) -> Path:
        """The folder whose ``component/`` subfolder configures that component."""
        if self.override is not None and _has_config(self.override / component):
            return self.override
        return CONFIGS / self.family

    def files(self) -> list[Path]:
        """Every config file that shapes the model (they enter its fingerprint)."""
        return sorted(
            path
            for component in self.components
            for path in (self.folder(component) / component).glob("*")
            if path.is_file() and path.suffix in (".json", ".txt")
        )

    def unet(self) -> dict[str, Any]:
        return _read_json(self.folder("unet") / "unet" / "config.json")


def _has_config(folder: Path) -> bool:
    return any((folder / name).is_file() for name in ("config.json", "scheduler_config.json", "tokenizer_config.json"))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelError(f"model config '{path}' cannot be read: {first_line(error)}") from None
    if not isinstance(data, dict):
        raise ModelError(f"model config '{path}' is not a JSON object")
    return data


def config_folder(model_config: str | os.PathLike | None) -> Path | None:
    """The ``--model-config`` folder, checked: it must configure at least one component, or it would
    change nothing."""
    if model_config is None or str(model_config) == "":
        return None
    folder = Path(model_config).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"{option_value('model_config', str(model_config))}: no such folder")
    if not any(_has_config(folder / name) for name in COMPONENTS):
        raise ConfigError(
            f"{option_value('model_config', str(model_config))} configures no component: it needs one of "
            "unet/config.json, vae/config.json, text_encoder/config.json, tokenizer/tokenizer_config.json, "
            "scheduler/scheduler_config.json (as in a diffusers model folder)"
        )
    return folder.resolve()


def check_against_config(recognised: Recognised, configs: Configs, name: str) -> None:
    """Refuse, before any weight is read into a model, a checkpoint whose UNet the config cannot hold."""
    unet = configs.unet()
    where = configs.folder("unet") / "unet" / "config.json"
    if unet.get("cross_attention_dim") != recognised.cross_attention_dim:
        raise ModelError(
            f"'{name}' has {recognised.cross_attention_dim}-dim cross-attention, its config ({where}) "
            f"{unet.get('cross_attention_dim')}: pass {option_value('model_config', 'FOLDER', placeholder=True)} "
            "with the configs it was trained with"
        )


# ----------------------------------------------------------------------------- loading


def refuse_stray_config(spec: str, model_config: str | os.PathLike | None) -> None:
    """A ``model_config`` folder only configures a single-file checkpoint: anything else is one line."""
    if model_config and not is_checkpoint_file(spec):
        raise ConfigError(f"{option_label('model_config')} configures a single-file checkpoint, not model '{spec}'")


def check_checkpoint_file(spec: str, model_config: str | os.PathLike | None) -> list[str]:
    """Before anything loads: the checks a single-file ``spec`` can pass from its keys and shapes alone
    (readable, a Stable Diffusion the configs fit), as one-line errors; the warnings it deserves."""
    refuse_stray_config(spec, model_config)
    if not is_checkpoint_file(spec):
        return []
    path = Path(spec).expanduser()
    override = config_folder(model_config)
    shapes, step = read_shapes(path)
    recognised = recognise(shapes, step, path.name)
    check_against_config(recognised, Configs(recognised.family, override), path.name)
    note = prediction_note(recognised, path.name, override)
    return [note] if note else []


def tokenizer_of(path: Path, model_config: Path | None) -> CLIPTokenizer:
    """The (first) tokenizer a checkpoint file is read with, from its keys and the configs alone."""
    shapes, step = read_shapes(path)
    configs = Configs(recognise(shapes, step, path.name).family, model_config)
    return clip_tokenizer(configs.folder("tokenizer") / "tokenizer")


def scheduler_of(path: Path, model_config: Path | None) -> DDIMScheduler:
    """The DDIM scheduler a checkpoint file is sampled with, from its keys and the configs alone."""
    from diffusers import DDIMScheduler

    shapes, step = read_shapes(path)
    configs = Configs(recognise(shapes, step, path.name).family, model_config)
    return DDIMScheduler.from_config(_read_json(configs.folder("scheduler") / "scheduler" / "scheduler_config.json"))


def load_single_file(
    path: Path, model_config: str | os.PathLike | None, device: torch.device, dtype: torch.dtype
) -> StableDiffusion:
    """A Stable Diffusion from a single-file checkpoint, on ``device`` in ``dtype``."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    override = config_folder(model_config)
    shapes, step = read_shapes(path)
    recognised = recognise(shapes, step, path.name)
    configs = Configs(recognised.family, override)
    check_against_config(recognised, configs, path.name)
    checkpoint = shapes if path.suffix.lower() != ".safetensors" else read_checkpoint(path)[0]

    def diffusers_part(cls: Any, component: str) -> Any:
        # in the file's own dtype: placing it casts once (from_single_file's cast warns of nothing useful)
        return cls.from_single_file(
            checkpoint, config=str(configs.folder(component)), subfolder=component, local_files_only=True
        )

    def text_part(cls: Any, component: str) -> Any:
        return create_diffusers_clip_model_from_ldm(
            cls,
            checkpoint,
            subfolder=component,
            config=str(configs.folder(component)),
            torch_dtype=dtype,
            local_files_only=True,
        )

    loaders: dict[str, Callable[[], Any]] = {
        "unet": lambda: diffusers_part(UNet2DConditionModel, "unet"),
        "vae": lambda: diffusers_part(AutoencoderKL, "vae"),
        "text_encoder": lambda: text_part(CLIPTextModel, "text_encoder"),
        "text_encoder_2": lambda: text_part(CLIPTextModelWithProjection, "text_encoder_2"),
    }
    parts: dict[str, Any] = {}
    for component in [name for name in configs.components if name in loaders]:
        parts[component] = _loaded(component, loaders[component], path.name)
        wanted = vae_dtype_for(dtype, parts[component].config.force_upcast) if component == "vae" else dtype
        parts[component] = place_for_inference(parts[component], device, wanted)
    for component in [name for name in configs.components if name.startswith("tokenizer")]:
        parts[component] = clip_tokenizer(configs.folder(component) / component)
    scheduler_config = _read_json(configs.folder("scheduler") / "scheduler" / "scheduler_config.json")
    parts["scheduler"] = DDIMScheduler.from_config(scheduler_config)
    return StableDiffusion(
        **parts,
        model_id=str(path),
        revision=None,
        fingerprint=file_fingerprint(path, configs),
        device=device,
        dtype=dtype,
    )


def _loaded(component: str, load: Callable[[], Any], name: str) -> Any:
    """``load()``'s module, every weight filled from the checkpoint; its failures as one line."""
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    from .device import is_out_of_memory

    try:
        module = load()
    except SingleFileComponentError as error:
        raise ModelError(f"'{name}' lacks the weights of its {component}: {first_line(error)}") from None
    except (ValueError, RuntimeError, KeyError, OSError) as error:
        if is_out_of_memory(error):
            raise
        if "meta tensor" in str(error):  # a weight the checkpoint lacks stayed empty until placed
            raise ModelError(_incomplete(name, component)) from None
        raise ModelError(f"'{name}' does not fit its {component} config: {first_line(error)}") from None
    missing = [key for key, value in module.state_dict().items() if value.is_meta]
    if missing:
        raise ModelError(_incomplete(name, component, f" ({len(missing)}, the first {missing[0]})"))
    return module


def _incomplete(name: str, component: str, which: str = "") -> str:
    return f"'{name}' lacks weights of its {component}{which}: it is not a complete checkpoint for this config"


# ----------------------------------------------------------------------------- tokenizer


def clip_tokenizer(folder: Path) -> CLIPTokenizer:
    """CLIP's tokenizer as ``folder`` configures it (its own vocabulary if it has one, else CLIP's BPE)."""
    from transformers import CLIPTokenizer

    if (folder / "tokenizer.json").is_file() or (
        (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    ):
        return CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    config = _read_json(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").is_file() else {}
    settings = {
        key: config[key]
        for key in ("bos_token", "eos_token", "unk_token", "pad_token", "model_max_length")
        if isinstance(config.get(key), (str, int))
    }
    settings.setdefault("model_max_length", PROMPT_LENGTH)
    try:
        vocabulary = clip_vocabulary()
    except OSError:  # a cache folder that cannot be written: the vocabulary is made afresh for this load
        with tempfile.TemporaryDirectory(prefix="vedit-clip-bpe-") as scratch:
            return CLIPTokenizer.from_pretrained(clip_vocabulary(Path(scratch)), local_files_only=True, **settings)
    return CLIPTokenizer.from_pretrained(vocabulary, local_files_only=True, **settings)


def clip_vocabulary(cache: Path | None = None) -> Path:
    """A folder with CLIP's ``vocab.json`` and ``merges.txt``, made once from the shipped BPE file.

    The ids are CLIP's: the 256 byte symbols, the same with "</w>", the merges joined in order,
    then <|startoftext|> and <|endoftext|>.
    """
    digest = hashlib.sha256(BPE_VOCABULARY.read_bytes()).hexdigest()[:16]
    folder = (cache or cache_root()) / "tokenizers" / f"clip-bpe-{digest}"
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        return folder
    lines = gzip.decompress(BPE_VOCABULARY.read_bytes()).decode("utf-8").split("\n")
    merges = lines[1 : BPE_MERGES + 1]  # the first line is a header
    symbols = byte_symbols()
    tokens = symbols + [symbol + "</w>" for symbol in symbols] + [pair.replace(" ", "") for pair in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    sweep_partials(folder)  # what a writer killed mid-write left
    for name, text in (
        ("vocab.json", json.dumps({token: index for index, token in enumerate(tokens)})),
        ("merges.txt", "#version: 0.2\n" + "\n".join(merges) + "\n"),
    ):
        partial = folder / (partial_prefix(name) + "tmp.partial")
        partial.write_text(text, encoding="utf-8")
        partial.replace(folder / name)  # another process may write the same file: each write is whole
    return folder


# ----------------------------------------------------------------------------- fingerprint


def file_fingerprint(path: Path, configs: Configs) -> str:
    """sha256 over the file's name, size and mtime_ns and the text of every config used: a changed
    file or another config is another model for the caches."""
    digest = hashlib.sha256()
    stat = path.stat()
    digest.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    for config in configs.files():
        digest.update(f"{config.parent.name}/{config.name}\0".encode() + config.read_bytes() + b"\n")
    return f"sha256:{digest.hexdigest()}"
