"""The options the installed plugins declare (:class:`vedit.Options` classes), found through the registries.

Every option of a plugin has a *flat name*, the one flags, ``vedit.toml``'s ``[run]`` table, job files and
the Python API's keywords know it by: ``<plugin>_<option>`` (``pnp_f_t``; the flag ``--pnp-f-t``), and each
of its aliases (``chunk_size`` for tokenflow's ``chunk_size``; the flag ``--chunk-size``). Its *key name*
(in cache keys, batch digests and messages) is its first alias, else its ``<plugin>_<option>`` name.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..options import Options, OptionSpec, option_label, options_class
from .manager import KINDS, hand_options, registered

# Kinds whose plugins act on the latents before they are decoded: their options enter checkpoint keys.
LATENT_KINDS = ("editor", "propagator", "engine", "nn_backend")
_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")


def identifier(name: str) -> str:
    """A plugin or option name as a keyword and a ``[run.<plugin>]`` key compare it: ``-`` as ``_``."""
    return name.replace("-", "_")


@dataclass(frozen=True)
class PluginOptions:
    """The options class one registered plugin declares."""

    kind: str
    plugin: str  # the registered item's name: "pnp", "deflicker-flow"
    options: type[Options]
    package: str = ""

    def flat_name(self, spec: OptionSpec) -> str:
        return identifier(f"{self.plugin}_{spec.name}")

    def key_name(self, spec: OptionSpec) -> str:
        """The name an option is best known by: its first alias, else ``<plugin>_<option>``."""
        return identifier(spec.aliases[0]) if spec.aliases else self.flat_name(spec)

    def flags(self, spec: OptionSpec) -> list[str]:
        """Every flag of an option: ``--<plugin>-<option>`` and one per alias."""
        names = [self.flat_name(spec), *(identifier(alias) for alias in spec.aliases)]
        return ["--" + name.replace("_", "-") for name in dict.fromkeys(names)]

    def instance(self, values: dict[str, Any] | None = None) -> Options:
        return self.options(**(values or {}))


def declared() -> dict[str, PluginOptions]:
    """Every installed plugin that declares options, by plugin name (``-`` as ``_``), in kind order.

    A plugin name that is not a word of lowercase letters, digits, ``-`` and ``_``, or that another kind
    already uses for options of its own, cannot name flags: its options are left out with a warning."""
    found: dict[str, PluginOptions] = {}
    for kind in KINDS:
        for name, item in registered(kind).items():
            cls = options_class(item.item)
            if cls is None or not cls.specs():
                continue
            key = identifier(name)
            if not _NAME.match(name) or key in found:
                why = "is not a plain lowercase name" if not _NAME.match(name) else f"is also the {found[key].kind}'s"
                warnings.warn(f"the options of {kind} {name!r} are ignored: the name {why}", stacklevel=2)
                continue
            found[key] = PluginOptions(kind, name, cls, item.package)
    return found


def flat_names(reserved: frozenset[str] = frozenset()) -> dict[str, tuple[PluginOptions, OptionSpec]]:
    """Every plugin option by flat name (``pnp_f_t``, ``chunk_size``). Names in ``reserved`` (the host's
    options) and names a second plugin claims are left out, the second with a warning."""
    names: dict[str, tuple[PluginOptions, OptionSpec]] = {}
    for owner in declared().values():
        for spec in owner.options.specs():
            for flag in owner.flags(spec):
                name = identifier(flag.removeprefix("--"))
                if name in reserved or name in names:
                    other = "a vedit option" if name in reserved else f"an option of {names[name][0].plugin!r}"
                    warnings.warn(f"{owner.kind} {owner.plugin!r}: {flag} is ignored, it is {other}", stacklevel=2)
                    continue
                names[name] = (owner, spec)
    return names


def configure(items: Iterable[Any], config: Any) -> None:
    """Hand each plugin object a run uses its own options: ``item.options``, from ``config`` (a RunConfig)."""
    for item in items:
        if item is not None:
            hand_options(item, config)


def unused_options(config: Any, used: dict[str, str]) -> list[str]:
    """Warnings for options the user set for an editor or propagator the run does not use (``used``:
    kind → the name it uses), such as ``--pnp-f-t`` with ``--editor sdedit``: a vedit.toml may well
    set the options of several editors, so they are ignored, not refused."""
    notes = []
    for owner in declared().values():
        if owner.kind not in used or identifier(owner.plugin) == identifier(used[owner.kind]):
            continue
        names = [owner.flat_name(spec) for spec in owner.options.specs()]
        given = [name for name in names if name in config.given]
        if given:
            shown = ", ".join(option_label(owner.key_name(spec)) for spec in owner.options.specs()
                              if owner.flat_name(spec) in given)  # fmt: skip
            notes.append(
                f"{shown} ignored: {owner.kind} {owner.plugin!r} does not run ({owner.kind} {used[owner.kind]!r} does)"
            )
    return notes


__all__ = ["LATENT_KINDS", "PluginOptions", "configure", "declared", "flat_names", "identifier", "unused_options"]
