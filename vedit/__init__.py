"""vedit: edit a whole video from a text prompt with Stable Diffusion, consistently across frames.

>>> import vedit
>>> result = vedit.edit("clip.mp4", "out.mp4", prompt="a watercolor painting", model="tiny")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Importing vedit changes nothing in the process (the C allocator's settings are applied by the
# command line and by the first edit, inversion or preview: vedit.runtime.allocator); it only lets
# the old module paths, such as vedit.hookspecs, be imported.
from . import _compat  # noqa: E402

_compat.install()

# What a plugin makes control frames with (``register_annotators``); torch-free.
from .control.sources import Annotator  # noqa: E402

# What a plugin describes a diffusion architecture with (``register_model_families``); torch-free too.
from .model.families import ModelFamily  # noqa: E402
from .options import Options, option  # noqa: E402  (the schema plugins declare their options with)

# What a plugin registers a UNet pass with (``register_passes``); torch-free, like the rest of this import.
from .plugins.passes import ExampleRequest, PassSpec  # noqa: E402

if TYPE_CHECKING:  # pragma: no cover
    from .pipeline.edit import EditResult
    from .pipeline.invert import InversionResult


def edit(input: Any, output: Any, config: Any = None, **options: Any) -> EditResult:
    """Edit ``input`` into ``output``; see :func:`vedit.pipeline.edit` for the options."""
    from .pipeline.edit import edit as _edit

    return _edit(input, output, config, **options)


def invert(input: Any, output: Any = None, config: Any = None, **options: Any) -> InversionResult:
    """DDIM-invert ``input`` (cached); see :func:`vedit.pipeline.invert_clip`."""
    from .pipeline.invert import invert_clip

    return invert_clip(input, output, config, **options)


__all__ = [
    "Annotator",
    "ExampleRequest",
    "ModelFamily",
    "Options",
    "PassSpec",
    "edit",
    "invert",
    "option",
    "__version__",
]
