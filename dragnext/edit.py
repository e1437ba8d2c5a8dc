"""`edit()`: one item end to end, as separate stages (SPEC §3):

    prepare → LoRA finetune → DDIM inversion → PBSI → mutual-attention denoising → decode
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFilter

from dragnext.config import EditConfig
from dragnext.ddim import DDIMSchedule, invert
from dragnext.denoise import denoise_edited
from dragnext.features import feature_hooks
from dragnext.geometry import RegionDrag
from dragnext.instruction import EditItem, Instruction, validate_item
from dragnext.lora import lora_applied, train_lora
from dragnext.model import DragModel
from dragnext.output_check import check_image, check_latent
from dragnext.pbsi import pbsi
from dragnext.peers.dragdiffusion import drag_diffusion
from dragnext.peers.warp import warp_latent
from dragnext.profiling import StageTimer
from dragnext.resize import Size, image_to_tensor, resize_mask, scale_point, tensor_to_image, working_size

log = logging.getLogger(__name__)

# The stages, in order. `edit()` runs them in memory; the batch tasks run the same sequence
# through `run_stage` and store the latents between them, so a retry resumes.
STAGES = ("prepare", "lora", "inversion", "pbsi", "denoise", "decode")
Callback = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass
class Prepared:
    """The item at the working resolution, on the model's device."""
    x: torch.Tensor  # (1, 3, H, W) in [-1, 1]
    drags: list[RegionDrag]
    editable: torch.Tensor  # M, bool (H, W)
    context: torch.Tensor  # prompt embedding

    @property
    def size(self) -> Size:
        return tuple(self.x.shape[-2:])


@dataclass
class EditResult:
    image: Image.Image
    item: EditItem
    config: EditConfig
    model: str
    device: str
    dtype: str
    working_size: Size
    timings: dict[str, float]
    unet_passes: dict
    peak_memory: dict
    lora_source: str  # trained | provided | disabled
    lora_weights: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    def to_record(self) -> dict:
        return {
            "item": self.item.to_record(),
            "model": self.model,
            "device": self.device,
            "dtype": self.dtype,
            "working_size": {"height": self.working_size[0], "width": self.working_size[1]},
            "timings_s": self.timings,
            "unet_passes": self.unet_passes,
            "peak_memory": self.peak_memory,
            "lora": self.lora_source,
            "postprocess": ["paste_background"] if self.config.output.paste_background else [],
            "config": self.config.to_record(),
        }


def region_drags(item: EditItem, size: Size) -> list[RegionDrag]:
    """The item's drags as `RegionDrag`s at `size` (a scale keeps its input-resolution factors)."""
    input_size = (item.image.height, item.image.width)

    def point(p):
        return None if p is None else scale_point(torch.tensor(p, dtype=torch.float64),
                                                  input_size, size)

    return [RegionDrag(d.type, resize_mask(torch.from_numpy(d.handle_mask), size),
                       point(d.handle), point(d.target), point(d.center), d.axis or "uniform", d.factors)
            for d in item.instruction.drags]


def prepare(item: EditItem, model: DragModel, config: EditConfig) -> Prepared:
    width, height = item.size
    size = working_size(width, height, config.size, model.size_multiple)
    return Prepared(
        x=image_to_tensor(item.image, size).to(model.device),
        drags=region_drags(item, size),
        editable=resize_mask(torch.from_numpy(item.editable), size),
        context=model.embed_prompt(item.instruction.prompt),
    )


def paste_background(edited: Image.Image, original: Image.Image, editable: np.ndarray) -> Image.Image:
    """Blend the original back outside M, feathered so no seam shows."""
    radius = max(1.0, 0.01 * max(original.size))
    alpha = Image.fromarray(editable.astype(np.uint8) * 255).filter(ImageFilter.GaussianBlur(radius))
    return Image.composite(edited, original.convert("RGB"), alpha)


def finetune(model: DragModel, prep: Prepared, config: EditConfig,
             notify: Callback = lambda *a: None) -> dict[str, torch.Tensor] | None:
    """LoRA weights for this item, or None when LoRA is off."""
    if not config.lora.enabled:
        return None
    return train_lora(model, prep.x, prep.context, config.lora, config.seed,
                      on_step=lambda done: notify("lora", done, config.lora.steps))


def _schedule(model: DragModel, config: EditConfig) -> DDIMSchedule:
    return DDIMSchedule.from_scheduler(model.scheduler, config.inversion.num_steps)


def invert_image(model: DragModel, prep: Prepared, config: EditConfig,
                 lora_weights: dict[str, torch.Tensor] | None,
                 notify: Callback = lambda *a: None) -> list[torch.Tensor]:
    """The reference trajectory [z_0 … z_T]."""
    T = config.inversion.start_step
    with lora_applied(model, lora_weights, config.lora.rank):
        return invert(_schedule(model, config), model.encode(prep.x), T,
                      lambda z, t: model.predict_noise(z, t, prep.context),
                      on_step=lambda done: notify("inversion", done, T))


def optimise(model: DragModel, prep: Prepared, trajectory: list[torch.Tensor], config: EditConfig,
             lora_weights: dict[str, torch.Tensor] | None,
             notify: Callback = lambda *a: None) -> torch.Tensor:
    """The method's latent edit: PBSI over T … T' for DragNeXt (returns z_{T'−1}); the
    peers edit z_T. Denoising continues from `config.edit_step`."""
    if config.method == "warp":
        return warp_latent(trajectory[-1], prep.drags, config.seed)
    schedule = _schedule(model, config)
    feature_size = (prep.size[0] // 2, prep.size[1] // 2)
    with lora_applied(model, lora_weights, config.lora.rank), \
            feature_hooks(model.unet, config.features.blocks, feature_size) as hooks:
        def forward(z: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
            return model.predict_noise(z, schedule.timesteps[k], prep.context), hooks.pop()

        if config.method == "dragdiffusion":
            total = config.dragdiffusion.iterations
            return drag_diffusion(trajectory, prep.drags, prep.editable, schedule, config.dragdiffusion,
                                  forward, on_iteration=lambda done: notify("pbsi", done, total))
        total = config.pbsi.steps * config.pbsi.iterations
        z_init = warp_latent(trajectory[-1], prep.drags, config.seed) if config.pbsi.init == "warp" else None
        return pbsi(trajectory, prep.drags, prep.editable, schedule, config.pbsi, forward,
                    on_iteration=lambda done: notify("pbsi", done, total), z_init=z_init)


def denoise_latent(model: DragModel, prep: Prepared, trajectory: list[torch.Tensor],
                   z_edit: torch.Tensor, config: EditConfig,
                   lora_weights: dict[str, torch.Tensor] | None,
                   notify: Callback = lambda *a: None) -> torch.Tensor:
    """Denoise the edited latent from `config.edit_step` to z_0 next to the reference branch."""
    k = config.edit_step
    with lora_applied(model, lora_weights, config.lora.rank):
        return denoise_edited(model, _schedule(model, config), z_edit, trajectory[k], k,
                              prep.context, config.attention,
                              on_step=lambda step: notify("denoise", k - step + 1, k))


def decode_image(model: DragModel, item: EditItem, z_0: torch.Tensor, config: EditConfig) -> Image.Image:
    """The edited image at the input size; raises `EditFailed` for an output that cannot be
    right (non-finite, or flat where the input is not)."""
    check_latent(z_0, "the edited latent z_0")
    x = model.decode(z_0)
    check_latent(x, "the decoded image")
    edited = tensor_to_image(x, *item.size)
    check_image(item.image, edited)
    if config.output.paste_background:
        edited = paste_background(edited, item.image, item.editable)
    return edited


def run_stage(name: str, model: DragModel, item: EditItem, config: EditConfig,
              done: dict[str, Any], notify: Callback = lambda *a: None) -> Any:
    """Stage `name` of an item, from the outputs of the stages before it (`done`, by name):
    prepare → `Prepared`, lora → weights | None, inversion → [z_0 … z_T], pbsi → the edited
    latent, denoise → z_0, decode → the edited image. The UNet passes it makes are counted
    under its name in `model.passes`."""
    with model.passes.stage(name):
        return _run_stage(name, model, item, config, done, notify)


def _run_stage(name: str, model: DragModel, item: EditItem, config: EditConfig,
               done: dict[str, Any], notify: Callback) -> Any:
    if name == "prepare":
        prep = prepare(item, model, config)
        notify("prepare", 1, 1)
        return prep
    prep, lora = done["prepare"], done.get("lora") if config.lora.enabled else None
    if name == "lora":
        return finetune(model, prep, config, notify)
    if name == "inversion":
        return invert_image(model, prep, config, lora, notify)
    if name == "pbsi":
        return optimise(model, prep, done["inversion"], config, lora, notify)
    if name == "denoise":
        return denoise_latent(model, prep, done["inversion"], done["pbsi"], config, lora, notify)
    if name == "decode":
        edited = decode_image(model, item, done["denoise"], config)
        notify("decode", 1, 1)
        return edited
    raise ValueError(f"unknown stage {name!r}; the stages are {', '.join(STAGES)}")


def edit(image: Image.Image, instruction: Instruction, model: DragModel,
         config: EditConfig | None = None, *, item_id: str = "item",
         lora_weights: dict[str, torch.Tensor] | None = None,
         callback: Callback | None = None) -> EditResult:
    """Edit one image with DragNeXt. Raises `InvalidItemError` for input that cannot be edited.

    `lora_weights` from an earlier `EditResult` skip the finetune (a retry's stored LoRA stage).
    """
    config = config or EditConfig()
    item = validate_item(EditItem(image=image, instruction=instruction, item_id=item_id))
    for warning in item.instruction.warnings:
        log.warning("item '%s': %s", item_id, warning)
    notify = callback or (lambda stage, done, total: None)
    timer = StageTimer(model.device)
    model.passes.reset()
    lora_source = "disabled" if not config.lora.enabled else (
        "provided" if lora_weights is not None else "trained")
    done: dict[str, Any] = {"lora": lora_weights} if lora_source == "provided" else {}
    for name in STAGES:
        with timer.stage(name):
            if name not in done:
                done[name] = run_stage(name, model, item, config, done, notify)
    return EditResult(
        image=done["decode"], item=item, config=config, model=model.spec, device=str(model.device),
        dtype=str(model.dtype).removeprefix("torch."), working_size=done["prepare"].size,
        timings=timer.seconds, unet_passes=model.passes.to_record(), peak_memory=timer.peak_memory(),
        lora_source=lora_source,
        lora_weights=done["lora"])
