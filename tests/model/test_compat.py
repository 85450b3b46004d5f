"""The old vedit.models path gives every public name it held, with a deprecation warning."""

from __future__ import annotations

import pytest

from vedit.model import builders, loading


def test_the_old_module_path_still_gives_every_public_name(monkeypatch):
    """``vedit.models`` was split in four; code that imports it keeps working, with a warning naming the parts."""
    import sys

    from vedit.model import device, stable_diffusion

    monkeypatch.delitem(sys.modules, "vedit.models", raising=False)
    with pytest.warns(DeprecationWarning, match=r"^vedit\.models has moved: import vedit\.model\.stable_diffusion or "):
        import vedit.models as old
    homes = {
        stable_diffusion: "COMPONENTS StableDiffusion",
        device: "resolve_device resolve_dtype dtype_name vae_dtype_for is_out_of_memory memory_hint",
        builders: "BUILT_IN_SPECS PROMPT_LENGTH SD_SCHEDULER_CONFIG BuiltSpec is_built_in built_spec build_tokenizer "
        "unet_config vae_config text_encoder_config",
        loading: "DEFAULT_MODEL HUB_PROBE_TIMEOUT peek_scheduler load_model",
    }
    for module, names in homes.items():
        for name in names.split():
            assert getattr(old, name) is getattr(module, name), name
