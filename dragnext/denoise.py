"""The last denoising stretch (SPEC §3 step 6): the edited latent is denoised in a batch
with the reference branch, the edited branch reading the reference's keys and values in
the self-attention layers of the last two decoder stages (`dragnext.architecture`)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from dragnext.attention import mutual_self_attention
from dragnext.conditioning import Conditioning
from dragnext.config import AttentionConfig
from dragnext.ddim import DDIMSchedule, denoise
from dragnext.model import DragModel


@torch.no_grad()
def denoise_edited(model: DragModel, schedule: DDIMSchedule, z_edit: torch.Tensor,
                   z_ref: torch.Tensor, k: int, context: Conditioning, config: AttentionConfig,
                   on_step: Callable[[int], None] | None = None) -> torch.Tensor:
    """Denoise z_edit from step k to 0 next to the reference z_ref (also at step k)."""
    predict = lambda z, t, a: model.predict_noise(z, t, context, a)
    if not config.mutual:
        return denoise(schedule, z_edit, k, predict, on_step)
    start = model.architecture.mutual_start_layer if config.start_layer is None else config.start_layer
    with mutual_self_attention(model.unet, start):
        pairs = torch.stack([z_ref, z_edit], dim=1).flatten(0, 1)  # item-major [reference, edited]
        return denoise(schedule, pairs, k, predict, on_step)[1::2].contiguous()
