"""`edit()`: one item end to end, as separate stages (SPEC §3):

    prepare → LoRA finetune → DDIM inversion → PBSI → mutual-attention denoising → decode
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

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
from dragnext.pbsi import pbsi
from dragnext.profiling import StageTimer
from dragnext.resize import Size, image_to_tensor, resize_mask, scale_point, tensor_to_image, working_size

log = logging.getLogger(__name__)

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
            "peak_memory": self.peak_memory,
            "lora": self.lora_source,
            "postprocess": ["paste_background"] if self.config.output.paste_background else [],
            "config": self.config.to_record(),
        }


def region_drags(item: EditItem, size: Size) -> list[RegionDrag]:
    """The item's drags as `RegionDrag`s at `size`."""
    input_size = (item.image.height, item.image.width)

    def point(p):
        return None if p is None else scale_point(torch.tensor(p, dtype=torch.float64),
                                                  input_size, size)

    return [RegionDrag(d.type, resize_mask(torch.from_numpy(d.handle_mask), size),
                       point(d.handle), point(d.target), point(d.center))
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


def edit(image: Image.Image, instruction: Instruction, model: DragModel,
         config: EditConfig | None = None, *, item_id: str = "item",
         lora_weights: dict[str, torch.Tensor] | None = None,
         callback: Callback | None = None) -> EditResult:
    """Edit one image with DragNeXt. Raises `InvalidItemError` for input that cannot be edited.

    `lora_weights` from an earlier `EditResult` skip the finetune (a retry's artefact).
    """
    config = config or EditConfig()
    item = validate_item(EditItem(image=image, instruction=instruction, item_id=item_id))
    for warning in item.instruction.warnings:
        log.warning("item '%s': %s", item_id, warning)
    notify = callback or (lambda stage, done, total: None)
    timer = StageTimer(model.device)
    schedule = DDIMSchedule.from_scheduler(model.scheduler, config.inversion.num_steps)
    T = config.inversion.start_step
    T_prime = T - config.pbsi.steps + 1

    with timer.stage("prepare"):
        prep = prepare(item, model, config)
    notify("prepare", 1, 1)

    lora_source = "disabled" if not config.lora.enabled else (
        "provided" if lora_weights is not None else "trained")
    with timer.stage("lora"):
        if lora_source == "trained":
            lora_weights = train_lora(
                model, prep.x, prep.context, config.lora, config.seed,
                on_step=lambda done: notify("lora", done, config.lora.steps))
    active_weights = lora_weights if config.lora.enabled else None

    def predict(z: torch.Tensor, t: int) -> torch.Tensor:
        return model.predict_noise(z, t, prep.context)

    with lora_applied(model, active_weights, config.lora.rank):
        with timer.stage("inversion"):
            z_0 = model.encode(prep.x)
            trajectory = invert(schedule, z_0, T, predict,
                                on_step=lambda done: notify("inversion", done, T))
        feature_size = (prep.size[0] // 2, prep.size[1] // 2)
        with timer.stage("pbsi"), feature_hooks(model.unet, config.features.blocks, feature_size) as hooks:
            def forward(z: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
                return predict(z, schedule.timesteps[k]), hooks.pop()

            total = config.pbsi.steps * config.pbsi.iterations
            z_edit = pbsi(trajectory, prep.drags, prep.editable, schedule, config.pbsi, forward,
                          on_iteration=lambda done: notify("pbsi", done, total))
        with timer.stage("denoise"):
            z_0_edit = denoise_edited(
                model, schedule, z_edit, trajectory[T_prime - 1], T_prime - 1, prep.context,
                config.attention, on_step=lambda k: notify("denoise", T_prime - k, T_prime - 1))

    with timer.stage("decode"):
        edited = tensor_to_image(model.decode(z_0_edit), *item.size)
        if config.output.paste_background:
            edited = paste_background(edited, item.image, item.editable)
    notify("decode", 1, 1)

    return EditResult(
        image=edited, item=item, config=config, model=model.spec, device=str(model.device),
        dtype=str(model.dtype).removeprefix("torch."), working_size=prep.size,
        timings=timer.seconds, peak_memory=timer.peak_memory(), lora_source=lora_source,
        lora_weights=lora_weights)
