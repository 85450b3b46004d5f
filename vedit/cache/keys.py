"""What enters cache keys and batch digests, from the options' declarations (:func:`vedit.config.setting`
and each plugin's :class:`vedit.Options`): :func:`keyed_options`."""

from __future__ import annotations

from typing import Any

from ..config import RunConfig, host_names, host_specs, path_and_suffix
from ..plugins.options import LATENT_KINDS, declared, flat_names, identifier
from ..quality.postprocess import parse

# Options that were fields of RunConfig before plugins declared their own: they are in every key, at
# their values, default or not, so that checkpoints and batch records made before still match.
_KEYED_SINCE_BEFORE = (
    "strength", "start", "pnp_f_t", "pnp_attn_t", "chunk_size", "max_joint_keyframes", "keyframes", "nn_backend",
)  # fmt: skip


def plugins_used(config: RunConfig) -> list[str]:
    """The plugins a run with ``config`` uses by name: its editor, propagator, engines, post-processors, flow
    backend and the annotators its ``--control`` names (a control clip's path names none)."""
    named = [config.editor, config.propagator, *config.engine.split(","), config.flow]
    named += [name for name, _ in parse(config.postprocess)]
    named += [path_and_suffix(control)[0] for control in config.control]
    return list(dict.fromkeys(identifier(name.strip()) for name in named if name.strip()))


# Host settings added after keys and digests were first written: they count only when set, so that the keys of
# runs that do not use them stay what they were.
KEYED_WHEN_SET = frozenset(
    {"model_config", "lora", "embedding", "control", "controlnet", "control_start", "control_end"}
)


def keyed_options(config: RunConfig, *, latents: bool) -> tuple[dict[str, Any], set[str]]:
    """The options a key covers, by key name, and which of them name files.

    ``latents=False`` (batch's up-to-date digest): the options that change the frames written, those
    declared ``affects_output``. ``latents=True`` (checkpoint keys): the host options that change the
    edited latents bit for bit, and the ``affects_output`` options of the plugins that act on the
    latents (editor, propagator, engines, NN backends). A plugin's option counts when the run uses the
    plugin and its value is not the default, so that a plugin that gains an option leaves every key as
    it was (the few that were vedit's own before plugins declared options count always, as they did)."""
    values: dict[str, Any] = {}
    paths: set[str] = set()
    for name, (spec, where) in host_specs().items():
        if where.affects_latents if latents else spec.affects_output:
            if name in KEYED_WHEN_SET and getattr(config, name) == spec.default:
                continue
            values[name] = getattr(config, name)
            if spec.path:
                paths.add(name)
    used = set(plugins_used(config))
    always = {(identifier(owner.plugin), spec.name) for name, (owner, spec) in flat_names(host_names()).items()
              if name in _KEYED_SINCE_BEFORE}  # fmt: skip
    always_plugins = {plugin for plugin, _ in always}
    for key, owner in declared().items():
        if (latents and owner.kind not in LATENT_KINDS) or not (key in used or key in always_plugins):
            continue
        given = config.options.get(key, {})
        for spec in owner.options.specs():
            value = given.get(spec.name, spec.default)
            if (key, spec.name) in always:
                counts = latents or spec.affects_output  # as when they were RunConfig fields
            else:
                counts = key in used and value != spec.default and spec.affects_output
            if counts:
                values[owner.key_name(spec)] = value
                if spec.path:
                    paths.add(owner.key_name(spec))
    return values, paths


__all__ = ["keyed_options", "plugins_used"]
