"""Model families: what the method needs to know about one diffusion architecture.

A family is registered through the ``register_model_families`` hook like every other plugin kind. It says

- how to recognise its UNet from the UNet's config (:meth:`ModelFamily.matches`);
- how prompts become the UNet's conditioning (:meth:`ModelFamily.encode_prompt`) and how that one
  tensor is handed to the UNet (:meth:`ModelFamily.unet_inputs`);
- the layers the method acts in: PnP's residual-injection resnets (:attr:`~ModelFamily.conv_layers`) and
  self-attention Q/K-injection blocks (:attr:`~ModelFamily.qk_layers`), and the parts of the UNet whose
  self-attention TokenFlow extends over the keyframes, records and propagates
  (:attr:`~ModelFamily.attention_layers`).

The conditioning is one tensor ``(n, L, D)`` per prompt, whatever the family: every UNet pass takes it as its
``text`` input, so every engine runs every family without a pass of its own. SD 1.x/2.x's is the text
encoder's hidden states (77 tokens). SDXL's is the two encoders' penultimate hidden states side by side
(77 × 2048), followed by one more row that carries the pooled embedding and the six added time ids
(original size, crop corner, target size); :meth:`SDXL.unet_inputs` splits that row off again inside the
pass, where the UNet takes it as ``added_cond_kwargs``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import ModelError

if TYPE_CHECKING:
    import torch

# Every transformer block of a Stable Diffusion UNet: TokenFlow's extended attention and propagation act in
# all of them (encoder, middle and decoder), as the published method does.
ALL_BLOCKS = ("down_blocks", "mid_block", "up_blocks")


class ModelFamily:
    """One diffusion architecture as the method sees it; subclass it and register an instance.

    The defaults describe a UNet conditioned by one CLIP text encoder (``model.text_encoder`` with
    ``model.tokenizer``), which is what SD 1.x and 2.x are.
    """

    name = ""
    description = ""
    conv_layers: tuple[str, ...] = ()  # PnP: resnets whose residual branch takes the source branch's
    qk_layers: tuple[str, ...] = ()  # PnP: transformer blocks whose self-attention Q/K take the source's
    attention_layers: tuple[str, ...] = ALL_BLOCKS  # TokenFlow: where self-attention is extended and propagated
    default_size = 512  # the pixel size the family was trained at (single-file guesses, docs)

    def matches(self, unet_config: Mapping[str, Any]) -> bool:
        """Whether a UNet with this config belongs to the family."""
        raise NotImplementedError

    def controlnet_matches(self, controlnet_config: Mapping[str, Any]) -> bool:
        """Whether a ControlNet with this config is of the family's architecture (its residuals fit the family's
        UNets); a family that names none takes no ControlNet."""
        return False

    def text_shape(self, model: Any) -> tuple[int, int]:
        """(L, D): the shape of one prompt's conditioning."""
        return int(model.tokenizer.model_max_length), int(model.text_encoder.config.hidden_size)

    def encode_prompt(self, model: Any, prompts: Sequence[str], size: tuple[int, int] | None = None) -> torch.Tensor:
        """The conditioning of each prompt (n, L, D) in the model's dtype on its device; ``size`` is the
        frames' (height, width) in pixels, for families whose conditioning depends on it."""
        ids = tokenize(model.tokenizer, prompts).to(model.text_encoder.device)
        return model.text_encoder(ids)[0].to(model.device, model.dtype)

    def unet_inputs(self, text: torch.Tensor, unet_config: Mapping[str, Any]) -> dict[str, Any]:
        """The UNet's keyword arguments for the conditioning ``text`` (called inside every pass: only
        traceable tensor operations)."""
        return {"encoder_hidden_states": text}

    def check(self, model: Any) -> None:
        """ModelError unless the model's parts fit each other."""
        cross = model.unet.config.cross_attention_dim
        width = self.text_shape(model)[1]
        if cross != width:
            raise ModelError(
                f"model '{model.model_id}' is inconsistent: its UNet expects {cross}-dim text embeddings, "
                f"its text encoder makes {width}-dim ones"
            )


def tokenize(tokenizer: Any, prompts: Sequence[str]) -> torch.Tensor:
    """Token ids (n, L) of the prompts, each padded or cut to the tokenizer's length."""
    if isinstance(prompts, str):
        prompts = [prompts]
    tokens = tokenizer(
        list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
        return_tensors="pt",
    )  # fmt: skip
    return tokens.input_ids


def family_of(unet_config: Mapping[str, Any], model_id: str = "") -> ModelFamily:
    """The registered family a UNet with ``unet_config`` belongs to: a third-party family that claims it
    before the built-in ones (it is the more specific), else ModelError naming what is registered."""
    from .. import plugins

    items = plugins.registered("model_family")
    ordered = sorted(items.values(), key=lambda item: item.package == plugins.manager.BUILT_IN_PACKAGE)
    for item in ordered:
        if item.item.matches(unet_config):
            return item.item
    names = ", ".join(sorted(items)) or "none"
    what = f"model '{model_id}'" if model_id else "this model"
    raise ModelError(
        f"{what} is of no known model family (registered: {names}): its UNet has blocks "
        f"{list(unet_config.get('down_block_types', ()))}; a plugin can add a family (register_model_families)"
    )
