"""The hooks a vedit plugin can implement (pluggy project name ``vedit``).

Every built-in editor, propagator, engine, nearest-neighbour backend, post-processor, flow backend
and UNet pass is registered through these hooks, exactly as a third-party package registers its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("vedit")
hookimpl = pluggy.HookimplMarker("vedit")

Register = Callable[[Any], None]


@hookspec
def register_editors(register: Register) -> None:
    """Register editors: objects that choose start latents, the timesteps to run and the injection."""


@hookspec
def register_propagators(register: Register) -> None:
    """Register propagators: objects that run the UNet over all frames at one denoising step."""


@hookspec
def register_engines(register: Register) -> None:
    """Register engines: objects that run (and may compile) the UNet."""


@hookspec
def register_nn_backends(register: Register) -> None:
    """Register nearest-neighbour backends used to match tokens between frames."""


@hookspec
def register_postprocessors(register: Register) -> None:
    """Register post-processors applied to decoded frames before they are written."""


@hookspec
def register_flow_backends(register: Register) -> None:
    """Register optical-flow backends, used by ``vedit eval`` and flow-guided post-processors."""


@hookspec
def register_passes(register: Register) -> None:
    """Register UNet passes (:class:`vedit.PassSpec`): a module with tensor inputs and outputs that every
    engine can build, with the function that makes its example inputs. Register the passes the plugin's
    own propagator or editor runs by name (``denoiser.run(name, ...)``)."""


@hookspec
def register_annotators(register: Register) -> None:
    """Register annotators (:class:`vedit.Annotator`): what turns the source frames into a ControlNet's control
    frames (edges, soft edges, depth, …), named by ``--control NAME``."""


@hookspec
def register_model_families(register: Register) -> None:
    """Register model families (:class:`vedit.ModelFamily`): how to recognise an architecture from its UNet's
    config, how prompts become its conditioning, and the layers PnP injects into and TokenFlow propagates."""


@hookspec
def register_commands(app: Any) -> None:
    """Add commands to the ``vedit`` Typer app."""


@hookspec(firstresult=True)
def choose_engine(device: Any) -> str | None:
    """Name the engine to use when ``--engine auto`` is asked for on ``device``."""


@hookspec(firstresult=True)
def choose_nn_backend(device: Any, tokens: int | None) -> str | None:
    """Name the nearest-neighbour backend to use when ``--nn-backend auto`` is asked for on ``device``.

    ``tokens`` is the largest number of tokens per frame the propagation pass will search (the
    latent height × width: 4096 at 512×512), or None when the caller does not know it. Call the
    hook through ``vedit.plugins.choose``, which always passes both; an implementation may leave
    ``tokens`` out of its signature (``choose_nn_backend(device)``) and is then called with the
    device alone.
    """
