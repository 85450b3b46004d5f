"""Run options: the ones every run has, declared once here; the plugins' own; ``vedit.toml``; validation.

Precedence, lowest first: the defaults, ``vedit.toml`` in the working directory (or the file given
with ``--config``), then command-line flags or keywords. A key in ``vedit.toml`` has the same name as
its flag (``negative-prompt``; ``negative_prompt`` is accepted too); a plugin's options go in a table
of their own (``[run.pnp]`` with ``f-t = 0.9``) or under ``[run]`` by their flag (``pnp-f-t = 0.9``).

Each option of :class:`RunConfig` is declared once, with :func:`setting`: its default, help, range,
the commands that take it and what it changes. The command line's flags, ``vedit invert``'s and
``vedit engines build``'s options, validation, cache keys and batch digests all come from that
declaration (:func:`host_specs`), and a plugin's options from its :class:`vedit.Options` class.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomllib

from .errors import ConfigError
from .options import (
    OptionSpec,
    annotation_kinds,
    check_number,
    command_line,
    flag_name,
    option,
    option_label,
    option_value,
)

CONFIG_FILENAME = "vedit.toml"
DEFAULT_MODEL = "stabilityai/stable-diffusion-2-1-base"
MAX_SEED = 2**63 - 1  # the largest seed torch.manual_seed takes that is also a signed 64-bit number

RUN, INVERT, BUILD, EVAL = "run", "invert", "engines build", "eval"  # the commands that take run options


@dataclass(frozen=True)
class Setting:
    """What the command line needs to know of a host option beyond its :class:`OptionSpec`."""

    commands: tuple[str, ...] = (RUN,)
    flags: tuple[str, ...] = ()  # the flag and its short form when they are not --<name>: ("--prompt", "-p")
    default_text: str | None = None  # help's [default: ...] when the default itself says nothing useful
    negatable: bool = False  # a switch written --name/--no-name (else --name alone)
    affects_latents: bool = True  # enters checkpoint keys: changes the edited latents, bit for bit
    hidden_in: tuple[str, ...] = ()  # commands that take it but do not show it (ignored there)
    folder_or_id: bool = False  # a local folder or a hub id: a relative value is a path when it exists


def setting(
    default: Any,
    help: str = "",  # noqa: A002
    *,
    min: float | None = None,  # noqa: A002
    max: float | None = None,  # noqa: A002
    choices: Iterable[Any] | None = None,
    affects_output: bool = True,
    affects_latents: bool = True,
    path: bool = False,
    commands: Iterable[str] = (RUN,),
    flags: Iterable[str] = (),
    default_text: str | None = None,
    negatable: bool = False,
    hidden_in: Iterable[str] = (),
    folder_or_id: bool = False,
) -> Any:
    """A field of :class:`RunConfig`: an option (:func:`vedit.option`'s meaning) plus where it appears.

    ``affects_output``: enters batch's up-to-date digest (the frames written depend on it);
    ``affects_latents``: enters checkpoint keys (the edited latents depend on it, bit for bit)."""
    spec = option(default, help=help, min=min, max=max, choices=choices, affects_output=affects_output, path=path)
    extra = Setting(
        tuple(commands), tuple(flags), default_text, negatable, affects_latents, tuple(hidden_in), folder_or_id
    )
    return field(default=default, metadata={"option": spec, "setting": extra})


ALL = (RUN, INVERT, BUILD)
CACHE_DIR_DEFAULT = "$VEDIT_CACHE_DIR or ~/.cache/vedit"
INVERSION_STEPS_HELP = (
    "DDIM inversion steps. Their schedule must pass through every timestep of the --steps one: with 50 steps, "
    "50, 100, 200, 250, 500 and 1000 do on SD's leading spacing, every multiple of 50 on a trailing one (a "
    "multiple of --steps alone is not always enough); an error names the nearest multiple that does."
)


@dataclass(init=False)
class RunConfig:
    """Every option of ``vedit run``; the Python API takes the same names as keyword arguments.

    The options of plugins are in :attr:`options` (plugin name → its options as given); a plugin's
    option can also be read and given by its flat name (``config.chunk_size``,
    ``RunConfig(pnp_f_t=0.9)``), as when they were fields of this class.
    """

    prompt: str | None = setting(None, "What the edited video should show (required).", flags=("--prompt", "-p"))
    source_prompt: str = setting("", "What the input shows (inversion and source branch).", commands=(RUN, INVERT))
    negative_prompt: str = setting("", "Negative prompt (the unconditional branch).")
    editor: str = setting("pnp", "Editor plugin: pnp, sdedit, img2img, or a plugin's.", commands=(RUN, BUILD))
    propagator: str = setting("tokenflow", "Propagator plugin: tokenflow, none, or a plugin's.", commands=(RUN, BUILD))
    engine: str = setting(
        "auto",
        "UNet engine: eager, compile, torchscript, onnxruntime, tensorrt, torch-tensorrt, a plugin's, auto, "
        "or a comma-separated list to try in order.",
        affects_output=False,
        commands=(RUN, INVERT),
    )
    engine_cache: str | None = setting(
        None,
        "Folder of built engines (ONNX, TorchScript, TensorRT plans).",
        default_text="engines in the cache folder",
        affects_output=False,
        affects_latents=False,
        path=True,
        commands=ALL,
    )  # None: "engines" in the cache folder (cache_dir), beside the inversions
    model: str = setting(
        DEFAULT_MODEL,
        "Hub id, local diffusers folder, single-file checkpoint (.safetensors, .ckpt), or a model built with random "
        "weights: tiny, tiny-sd2(-v), tiny-sdxl, random:sd15, random:sd21(-v), random:sdxl (tiny@N: weights from "
        "seed N).",
        commands=ALL,
        folder_or_id=True,
    )
    revision: str | None = setting(None, "Model revision (hub branch, tag or commit).", commands=ALL)
    model_config: str | None = setting(
        None,
        "Folder of diffusers component configs (model_index.json, unet/config.json, scheduler/...) for a single-file "
        "--model checkpoint, overriding the configs of the family recognised from its weights.",
        default_text="the recognised family's",
        affects_latents=False,  # the configs it holds enter the model's fingerprint, which keys every cache
        path=True,
        commands=ALL,
    )
    # The model's fingerprint, in every cache key, covers LoRAs and embeddings by content: not in checkpoint keys.
    lora: tuple[str, ...] = setting(
        (),
        "LoRA fused into the model's weights: a .safetensors (or weights-only .bin/.pt) file or its folder, or a hub "
        "id in the local cache (ID or ID/WEIGHT.safetensors), with its scale after a colon (style.safetensors:0.8; "
        "default 1). Repeat for more.",
        default_text="none",
        affects_latents=False,
        path=True,
        commands=ALL,
        folder_or_id=True,
    )
    embedding: tuple[str, ...] = setting(
        (),
        "Textual-inversion embedding file (.safetensors, .pt or .bin) with the token prompts use for it after a "
        "colon (cat.pt:<my-cat>; default the file's own token, else its name). Repeat for more.",
        default_text="none",
        affects_latents=False,
        path=True,
        commands=ALL,
    )
    steps: int = setting(
        50, "Sampling steps T.", min=1, max=1000,
        commands=(RUN, INVERT),
    )  # fmt: skip
    inversion_steps: int = setting(50, INVERSION_STEPS_HELP, min=1, max=1000, commands=(RUN, INVERT))
    guidance: float = setting(7.5, "Classifier-free guidance scale.", min=0.0, max=100.0)
    # Structure guidance (vedit.control). The control frames and the ControlNets' weights enter checkpoint keys by
    # content (vedit.pipeline.stages.checkpoints_for), not as these paths.
    control: tuple[str, ...] = setting(
        (),
        "Structure guidance with a ControlNet: an annotator (canny, softedge, or a plugin's) that makes control "
        "frames from the source, or your own control clip or folder of control frames, with its scale after a colon "
        "(canny:0.8, depth.mp4:0.5; default 1). Repeat for several ControlNets at once.",
        default_text="none",
        affects_latents=False,
        path=True,
        folder_or_id=True,
    )
    controlnet: tuple[str, ...] = setting(
        (),
        "The ControlNet of each --control, in order: a local diffusers folder, a hub id in the local cache, or "
        "random (random weights made from the model's UNet, for tests and benchmarks). Where it is left out, the "
        "annotator's configured ControlNet for the model's family.",
        default_text="the annotator's",
        affects_latents=False,
        path=True,
        folder_or_id=True,
    )
    control_start: float = setting(
        0.0, "Fraction of the denoising steps run after which the controls start to act.", min=0.0, max=1.0
    )
    control_end: float = setting(
        1.0, "Fraction of the denoising steps run after which the controls stop acting.", min=0.0, max=1.0
    )
    checkpoint_every: int = setting(
        5,
        "Keep a checkpoint of the edited latents in the cache every this many steps; "
        "the same command resumes a stopped run from it. 0: none.",
        min=0,
        max=1000,
        affects_output=False,
        affects_latents=False,
    )
    inversion: str | None = setting(
        None, "Use this trajectory file (from 'vedit invert -o') instead of inverting.", path=True
    )
    seed: int = setting(
        0,
        "Random seed of the img2img noise and the keyframe draws (a built model's weights come from its spec: tiny@N).",
        min=0,
        max=MAX_SEED,
        commands=ALL,
        hidden_in=(INVERT, BUILD),
    )
    size: str | None = setting(
        None, "Working size WxH (multiples of 8).", default_text="short side near 512", commands=(RUN, INVERT)
    )
    frames: str | None = setting(
        None,
        "Frame range START:STOP:STEP (source frame indices, STOP exclusive).",
        default_text="all",
        commands=(RUN, INVERT),
    )
    max_frames: int | None = setting(None, "At most this many frames.", min=1, commands=(RUN, INVERT))
    fps: str | None = setting(
        None, "Source frame rate override (folders of images default to 24).", default_text="the source's",
        affects_latents=False,
    )  # fmt: skip
    output_size: str = setting("source", "source, working or WxH.", affects_latents=False)
    device: str = setting("auto", "auto, cpu, cuda, cuda:N or mps.", commands=ALL)
    dtype: str = setting("auto", "auto, fp32, fp16 or bf16.", commands=ALL)
    batch_size: int | str = setting(
        "auto",
        "Frames per VAE / inversion / per-frame UNet batch, or auto (from free device memory).",
        min=1,
        max=4096,
        choices=("auto",),
        affects_output=False,
        commands=ALL,
    )  # "auto": chosen from free device memory (8 on the CPU)
    postprocess: str | None = setting(
        None,
        "Post-processors applied to the decoded frames, in order: NAME[:KEY=VALUE...], comma-separated "
        "(deflicker-luma,deflicker-flow:strength=0.7).",
        affects_latents=False,
    )
    flow: str = setting(
        "dis", "Optical-flow backend for --eval and flow-guided post-processing: dis, raft or a plugin's.",
        affects_latents=False, commands=(RUN, EVAL),
    )  # fmt: skip
    clip: str = setting(
        "openai/clip-vit-large-patch14",
        "CLIP model for the text and frame scores of --eval and 'vedit eval': a hub id already in the local "
        "cache, or a folder (never downloaded).",
        affects_latents=False,
        commands=(RUN, EVAL),
        folder_or_id=True,
    )
    eval: bool = setting(
        False,
        "After writing, measure the edit as 'vedit eval' does and write the report beside the output "
        "(out.mp4 -> out.eval.json).",
        negatable=True,
        affects_latents=False,
    )
    cache_dir: str | None = setting(
        None,
        "Cache folder: inversions, checkpoints and, unless --engine-cache, built engines.",
        default_text=CACHE_DIR_DEFAULT,
        affects_output=False,
        affects_latents=False,
        path=True,
        commands=(RUN, INVERT),
    )
    no_cache: bool = setting(
        False, "Neither read nor write the inversion cache (nor annotations, nor checkpoints).", affects_output=False,
        affects_latents=False, commands=(RUN, INVERT),
    )  # fmt: skip
    cache_max_gb: float = setting(
        20.0, "Cache size cap in GB, for the inversions and, counted apart, the annotations; the least recently "
        "used are evicted.", min=0.0,
        affects_output=False, affects_latents=False, commands=(RUN, INVERT),
    )  # fmt: skip
    allow_short: bool = setting(
        False,
        "Accept a clip that ends before its container says: warn and edit the frames that could be read.",
        affects_latents=False,
        commands=(RUN, INVERT),
    )
    force_inversion: bool = setting(
        False,
        "Use the --inversion file even if it was made from another clip, model or source prompt.",
        affects_latents=False,
    )
    keep_timestamps: bool = setting(
        False,
        "Keep a variable-rate source's own frame times instead of resampling it to its average rate.",
        affects_latents=False,
    )
    # Each command says what --overwrite replaces: declared by the commands, not generated.
    overwrite: bool = setting(False, affects_output=False, affects_latents=False, commands=())
    # The options of plugins (plugin name, "-" as "_" → option → value) as given; defaults are not stored.
    options: dict[str, dict[str, Any]] = field(default_factory=dict)

    # Not an option (no annotation: not a field, so in no key, digest or file): the options the
    # user set, in vedit.toml, as flags or as keywords, so that a check can tell a value asked
    # for from the same value by default. load_config and the Python API fill it in.
    given = frozenset[str]()

    def __init__(self, **values: Any) -> None:
        for f in fields(self):
            setattr(self, f.name, f.default if f.default_factory is dataclasses.MISSING else f.default_factory())
        plugin_values = values.pop("options", None) or {}
        self.options = {plugin: dict(table) for plugin, table in plugin_values.items()}
        host = host_names()
        for key, value in values.items():
            if key in host:
                setattr(self, key, value)
                continue
            owner, spec = _plugin_option(key, f"RunConfig() got an unexpected keyword argument {key!r}")
            self.options.setdefault(owner, {})[spec.name] = value

    def __getattr__(self, name: str) -> Any:
        # Only for names that are not attributes: a plugin's option by its flat name (config.chunk_size).
        if name.startswith("_") or "options" not in self.__dict__:
            raise AttributeError(name)
        owner, spec = _plugin_option(name, f"'RunConfig' object has no attribute {name!r}", error=AttributeError)
        return self.options.get(owner, {}).get(spec.name, spec.default)

    def plugin_options(self, plugin: str) -> Any:
        """The options instance of ``plugin`` (a :class:`vedit.Options`), with what was given for it;
        None for a plugin that declares none."""
        from .plugins.options import declared, identifier

        owner = declared().get(identifier(plugin))
        return owner.instance(self.options.get(identifier(plugin))) if owner is not None else None

    def replace(self, **changes: Any) -> RunConfig:
        copy = dataclasses.replace(self, **changes)
        copy.given = self.given
        return copy

    def giving(self, keys: Iterable[str]) -> RunConfig:
        """A copy that records ``keys`` (option names) as set by the user too."""
        copy = self.replace()
        copy.given = self.given | {key.replace("-", "_") for key in keys}
        return copy


@functools.cache
def host_specs() -> dict[str, tuple[OptionSpec, Setting]]:
    """Every option of :class:`RunConfig` (not the plugins') with its spec and where it appears, in order."""
    hints = typing.get_type_hints(RunConfig)
    specs: dict[str, tuple[OptionSpec, Setting]] = {}
    for f in fields(RunConfig):
        if "option" not in f.metadata:
            continue
        spec = dataclasses.replace(f.metadata["option"], name=f.name, kinds=annotation_kinds(hints[f.name], f.name))
        specs[f.name] = (spec, f.metadata["setting"])
    return specs


def host_names() -> frozenset[str]:
    return frozenset(f.name for f in fields(RunConfig))


def _plugin_option(name: str, unknown: str, error: type[Exception] = TypeError) -> tuple[str, OptionSpec]:
    """The plugin (by identifier) and option a flat name (``chunk_size``, ``pnp_f_t``) stands for."""
    from .plugins.options import flat_names, identifier

    found = flat_names(host_names()).get(identifier(name))
    if found is None:
        raise error(unknown)
    owner, spec = found
    return identifier(owner.plugin), spec


def field_types() -> dict[str, Any]:
    """Every host run option's name (as in :class:`RunConfig`) mapped to its type annotation."""
    hints = typing.get_type_hints(RunConfig)
    return {name: hints[name] for name in host_specs()}


def check_numbers(config: RunConfig) -> RunConfig:
    """``config`` when every value in it is of its option's type and every number is finite and in
    range (a RunConfig built by hand has not been through :func:`validate`); one-line errors otherwise."""
    for name, (spec, _) in host_specs().items():
        value = getattr(config, name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            check_number(value, option_label(name), spec.min, spec.max)
    validate({"options": config.options})
    return config


def _known_keys() -> list[str]:
    from .plugins.options import flat_names

    return sorted({*host_specs(), *flat_names(host_names())})


def _table_label(plugin: str, origin: str | None) -> str:
    """Where a plugin's table is, as an error names it: ``v.toml: [run.pnp]``, ``jobs.toml: [run.pnp]``,
    ``jobs.toml: job 2: pnp`` (a job's inline table), or ``options['pnp']`` in the Python API."""
    if origin is None:
        return f"options[{plugin!r}]"
    if origin.endswith(": [run]"):  # a job file's shared table
        return f"{origin.removesuffix('[run]')}[run.{plugin}]"
    if ": " in origin:  # a place inside a file: a job
        return f"{origin}: {plugin}"
    return f"{origin}: [run.{plugin}]"


def _check_plugin_table(plugin: str, table: Any, origin: str | None, clean: dict[str, dict[str, Any]]) -> None:
    """The options of one plugin given as a table (``[run.pnp]``, ``options={"pnp": {...}}``) into ``clean``."""
    from .plugins.options import declared, identifier

    owners = declared()
    owner = owners.get(identifier(plugin))
    where = _table_label(plugin, origin)
    if owner is None:
        known = ", ".join(sorted(o.plugin for o in owners.values())) or "none"
        raise ConfigError(f"{where}: no installed plugin {plugin!r} has options (plugins with options: {known})")
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table of options, got {type(table).__name__}")
    specs = {identifier(spec.name): spec for spec in owner.options.specs()}
    for raw_key, value in table.items():
        spec = specs.get(identifier(raw_key))
        if spec is None:
            known = ", ".join(name.replace("_", "-") for name in specs)
            raise ConfigError(
                f"{where}: {owner.kind} {owner.plugin!r} has no option {raw_key!r} (its options: {known})"
            )
        label = f"{where} option {raw_key!r}" if origin else option_label(owner.key_name(spec))
        clean.setdefault(identifier(owner.plugin), {})[spec.name] = spec.check(value, label)


def validate(values: dict[str, Any], origin: str | None = None) -> dict[str, Any]:
    """Normalise keys and check names, types and ranges; errors name the offending key.

    Host options keep their names; a plugin's options, given by flat name (``pnp_f_t``, ``chunk-size``),
    as a table (``pnp = {f-t = 0.9}`` in a file) or as ``options={"pnp": {"f_t": 0.9}}``, come back under
    ``"options"`` (plugin → option → value). With ``origin`` (a file name) errors name the key as written in
    that file; without it the values came from the command line or the Python API and errors name the flag
    (``--max-frames``) or the keyword (``max_frames``), as :func:`option_label` does.
    """
    from .plugins.options import flat_names, identifier

    host = host_specs()
    plugin_names = flat_names(host_names())
    clean: dict[str, Any] = {}
    plugin_values: dict[str, dict[str, Any]] = {}
    for raw_key, value in values.items():
        key = identifier(raw_key)
        where = f"{origin}: option {raw_key!r}" if origin else option_label(key)
        if key == "options" and isinstance(value, dict) and not origin:
            for plugin, table in value.items():
                _check_plugin_table(plugin, table, origin, plugin_values)
        elif key in host:
            clean[key] = host[key][0].check(value, where)
        elif key in plugin_names:
            owner, spec = plugin_names[key]
            plugin_values.setdefault(identifier(owner.plugin), {})[spec.name] = spec.check(value, where)
        elif isinstance(value, dict) and origin:
            _check_plugin_table(raw_key, value, origin, plugin_values)
        else:
            known = ", ".join(k.replace("_", "-") for k in _known_keys())
            prefix = f"{origin}: " if origin else ""
            raise ConfigError(f"{prefix}unknown option {raw_key!r} (known: {known})")
    if plugin_values:
        clean["options"] = plugin_values
    return clean


def merge(values: dict[str, Any], more: dict[str, Any]) -> dict[str, Any]:
    """``values`` updated with ``more`` (both as :func:`validate` returns them), plugin by plugin."""
    merged = {**values, **{k: v for k, v in more.items() if k != "options"}}
    options = {plugin: dict(table) for plugin, table in values.get("options", {}).items()}
    for plugin, table in more.get("options", {}).items():
        options.setdefault(plugin, {}).update(table)
    if options:
        merged["options"] = options
    return merged


def given_names(values: dict[str, Any]) -> set[str]:
    """The option names ``values`` (as :func:`validate` returns them) sets: host names and plugins' flat
    ``<plugin>_<option>`` names."""
    names = {key for key in values if key != "options"}
    for plugin, table in values.get("options", {}).items():
        names.update(f"{plugin}_{name}" for name in table)
    return names


def read_toml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """A TOML file's tables; one-line ConfigErrors (``what`` names the kind of file) when it is
    missing, unreadable or not TOML."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except OSError as error:
        raise ConfigError(f"{what} {path} cannot be read: {error.strerror}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{what} {path} is not valid TOML: {error}") from None


def absolute_path(value: str, base: Path) -> str:
    """A path option's value made absolute: ``~`` expanded, a relative one taken from ``base``."""
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def path_and_suffix(item: str) -> tuple[str, str | None]:
    """An item of a list of files, ``PATH[:SUFFIX]`` (``style.safetensors:0.8``), split at its last colon; the
    suffix is None when there is none (a colon inside a path, as in ``C:\\loras\\a.safetensors``, is part of it)."""
    head, colon, tail = item.rpartition(":")
    if not colon or not head or "/" in tail or "\\" in tail:
        return item, None
    return head, tail


def path_and_scale(
    item: str, where: str, low: float | None = None, high: float | None = None
) -> tuple[str, float | None]:
    """An item of a list, ``PATH_OR_NAME[:SCALE]`` (``style.safetensors:0.8``, ``canny:0.5``), split as
    :func:`path_and_suffix` splits it, the scale checked against the bounds (one-line ConfigErrors naming
    ``where``); None when there is no scale. An existing file whose own name holds a colon is one whole item."""
    head, suffix = path_and_suffix(item)
    if suffix is None:
        return head, None
    try:
        value = float(suffix)
    except ValueError:
        if Path(item).expanduser().exists():
            return item, None
        raise ConfigError(f"{where}: the scale after the colon must be a number, got {suffix!r}") from None
    return head, check_number(value, f"{where}: the scale", low, high)


def _absolute_item(item: str, base: Path, folder_or_id: bool) -> str:
    """An item of a list of files made absolute from ``base``; with ``folder_or_id``, only when it names a file
    there (else it is a hub id, ``owner/name/FILE.safetensors`` included, and stays as it is)."""
    path, suffix = path_and_suffix(item)
    if folder_or_id and not (base / Path(path).expanduser()).exists():
        return item
    path = absolute_path(path, base)
    return path if suffix is None else f"{path}:{suffix}"


def paths_from(values: dict[str, Any], base: Path, only: Iterable[str] | None = None) -> dict[str, Any]:
    """``values`` (as :func:`validate` returns them) with every path option (declared with ``path``, the
    host's and the plugins') made absolute from ``base``: the folder of the file that named them. With
    ``only``, only the options of those names (host names, plugins' ``<plugin>_<option>``) are."""
    from .plugins.options import declared

    chosen = None if only is None else set(only)
    out = dict(values)
    for key, (spec, where) in host_specs().items():
        if spec.path and out.get(key) and (chosen is None or key in chosen):
            value = out[key]
            if isinstance(value, tuple):
                out[key] = tuple(_absolute_item(item, base, where.folder_or_id) for item in value)
            else:
                out[key] = absolute_path(value, base)
    owners = declared()
    options = {plugin: dict(table) for plugin, table in out.get("options", {}).items()}
    for plugin, table in options.items():
        for spec in owners[plugin].options.specs() if plugin in owners else ():
            if spec.path and table.get(spec.name) and (chosen is None or f"{plugin}_{spec.name}" in chosen):
                table[spec.name] = absolute_path(table[spec.name], base)
    if options:
        out["options"] = options
    return out


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The ``[run]`` table of a vedit.toml file (with its ``[run.<plugin>]`` tables), validated; path
    options are made absolute from the file's folder."""
    path = Path(path)
    data = read_toml(path)
    unknown = set(data) - {"run"}
    if unknown:
        raise ConfigError(f"{path}: unknown table or key {sorted(unknown)[0]!r} (options go under [run])")
    run = data.get("run", {})
    if not isinstance(run, dict):
        raise ConfigError(f"{path}: 'run' must be a table")
    return paths_from(validate(run, str(path)), path.resolve().parent)


def load_config(config_path: str | Path | None = None, cwd: Path | None = None, **overrides: Any) -> RunConfig:
    """Defaults, then vedit.toml (``config_path`` or the working directory's), then ``overrides``.

    Overrides whose value is None are treated as not given.
    """
    values: dict[str, Any] = {}
    if config_path is not None:
        values = read_config_file(config_path)
    else:
        local = (cwd or Path.cwd()) / CONFIG_FILENAME
        if local.is_file():
            values = read_config_file(local)
    # A file that restates a default (a copy of the defaults, as the repository's vedit.toml is)
    # asks for nothing; a flag or keyword always asks.
    defaults = RunConfig()
    stated = {key for key in given_names(values) if _value(values, key) != getattr(defaults, key)}
    values = _without_restated_plugin_defaults(values, stated)
    given = validate({k: v for k, v in overrides.items() if v is not None})
    values = merge(values, given)
    return RunConfig(**values).giving(stated | given_names(given))


def _without_restated_plugin_defaults(values: dict[str, Any], stated: set[str]) -> dict[str, Any]:
    options = {
        plugin: kept
        for plugin, table in values.get("options", {}).items()
        if (kept := {name: value for name, value in table.items() if f"{plugin}_{name}" in stated})
    }
    return {**{k: v for k, v in values.items() if k != "options"}, **({"options": options} if options else {})}


def _value(values: dict[str, Any], name: str) -> Any:
    if name in values:
        return values[name]
    for plugin, table in values.get("options", {}).items():
        for option_name, value in table.items():
            if f"{plugin}_{option_name}" == name:
                return value
    return None


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    return repr(value)


def defaults_as_toml() -> str:
    """The defaults written as a vedit.toml: the ``[run]`` table, then one ``[run.<plugin>]`` table per
    installed plugin with options (options without a default are left out)."""
    from .plugins.options import declared

    lines = ["[run]"]
    for name, (spec, _) in host_specs().items():
        if spec.default is not None:
            lines.append(f"{name.replace('_', '-')} = {_toml_value(spec.default)}")
    for owner in declared().values():
        table = [
            f"{s.name.replace('_', '-')} = {_toml_value(s.default)}"
            for s in owner.options.specs()
            if s.default is not None
        ]
        if table:
            lines += ["", f"[run.{owner.plugin}]", *table]
    return "\n".join(lines) + "\n"


__all__ = [
    "RunConfig",
    "Setting",
    "setting",
    "host_specs",
    "field_types",
    "load_config",
    "merge",
    "absolute_path",
    "path_and_suffix",
    "path_and_scale",
    "paths_from",
    "given_names",
    "read_config_file",
    "validate",
    "flag_name",
    "defaults_as_toml",
    "check_number",
    "check_numbers",
    "command_line",
    "option_label",
    "option_value",
]
