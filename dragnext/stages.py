"""The stages of an edit (SPEC §3), each over a batch of items that share a config and a
working size: every UNet call takes all of them.

    prepare → LoRA finetune → DDIM inversion → PBSI → mutual-attention denoising → decode

A stage takes the `Batch` and the outputs of the stages before it (one dict per item) and
returns one output per item; an item whose own output cannot be right gets its exception
in its place, and its batch-mates go on. `dragnext.graph` says what each stage reads and
depends on, and runs them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFilter

from dragnext.conditioning import Conditioning
from dragnext.config import EditConfig, OutputConfig
from dragnext.ddim import DDIMSchedule, invert
from dragnext.denoise import denoise_edited
from dragnext.features import feature_hooks
from dragnext.geometry import RegionDrag, dilate, sample, settled_region, swept_region
from dragnext.instruction import EditItem
from dragnext.lora import lora_applied, train_lora
from dragnext.model import DragModel
from dragnext.output_check import EditFailed, check_image, check_latent
from dragnext.pbsi import pbsi
from dragnext.peers.dragdiffusion import drag_diffusion
from dragnext.peers.warp import warp_latent
from dragnext.resize import (
    Size,
    image_to_tensor,
    resize_mask,
    rgb_tensor,
    scale_point,
    tensor_to_image,
    touched_cells,
    working_size,
)

Callback = Callable[[str, int, int], None]  # (stage, done, total)
# `output.paste_unswept` and `paste_path` widen the region they keep by this share of the working
# size (at least the px): the moved object's soft edge and the denoiser's blur around it stay the edit's.
PASTE_MARGIN, PASTE_MARGIN_PX = 0.03, 2
# `output.paste_moved` keeps the moved pixels this far past each final target region: the
# object's own anti-aliased edge and a sliver of what surrounded it, feathered into the edit.
MOVED_EDGE_PX = 2
Outputs = list[dict[str, Any]]  # per item: stage name → its output


@dataclass
class Prepared:
    """One item at the working resolution, on the model's device."""
    x: torch.Tensor  # (1, 3, H, W) in [-1, 1]
    drags: list[RegionDrag]
    editable: torch.Tensor  # M, bool (H, W)
    context: Conditioning  # the prompt's, for an image of this size

    @property
    def size(self) -> Size:
        return tuple(self.x.shape[-2:])


@dataclass
class Batch:
    """Items edited together: one config, one working size."""
    items: list[EditItem]
    model: DragModel
    config: EditConfig
    notify: Callback

    def __len__(self) -> int:
        return len(self.items)


def item_working_size(item: EditItem, model: DragModel, config: EditConfig) -> Size:
    width, height = item.size
    return working_size(width, height, config.working_side(model.architecture), model.size_multiple)


def region_drags(item: EditItem, size: Size, touched: bool = False) -> list[RegionDrag]:
    """The item's drags as `RegionDrag`s at `size` (a scale keeps its input-resolution factors);
    `touched`: each handle mask with every cell a pixel of it touches (`touched_cells`)."""
    input_size = (item.image.height, item.image.width)
    shrink = touched_cells if touched else resize_mask

    def point(p):
        return None if p is None else scale_point(torch.tensor(p, dtype=torch.float64),
                                                  input_size, size)

    return [RegionDrag(d.type, shrink(torch.from_numpy(d.handle_mask), size),
                       point(d.handle), point(d.target), point(d.center), d.axis or "uniform", d.factors)
            for d in item.instruction.drags]


def _stack(done: Outputs, stage: str) -> torch.Tensor:
    return torch.cat([d[stage] for d in done])


def _contexts(done: Outputs) -> Conditioning:
    return Conditioning.cat([d["prepare"].context for d in done])


def _lora(batch: Batch, done: Outputs) -> list | None:
    return [d["lora"] for d in done] if batch.config.lora.enabled else None


def _schedule(batch: Batch) -> DDIMSchedule:
    schedule = DDIMSchedule.from_scheduler(batch.model.scheduler, batch.config.inversion.num_steps)
    return schedule.to(batch.model.device)


def prepare(batch: Batch, done: Outputs) -> list[Prepared]:
    model = batch.model
    prepared = []
    for item in batch.items:
        size = item_working_size(item, model, batch.config)
        prepared.append(Prepared(
            x=image_to_tensor(item.image, size).to(model.device),
            drags=region_drags(item, size),
            editable=resize_mask(torch.from_numpy(item.editable), size),
            context=model.embed_prompt(item.instruction.prompt, size)))
    batch.notify("prepare", 1, 1)
    return prepared


def finetune(batch: Batch, done: Outputs) -> list:
    """Each item's LoRA weights (one batched training), or None when LoRA is off."""
    config = batch.config
    if not config.lora.enabled:
        return [None] * len(batch)
    x = torch.cat([d["prepare"].x for d in done])
    return train_lora(batch.model, x, _contexts(done), config.lora, config.seed,
                      on_step=lambda step: batch.notify("lora", step, config.lora.steps))


def invert_images(batch: Batch, done: Outputs) -> list[list[torch.Tensor]]:
    """Each item's reference trajectory [z_0 … z_T]."""
    model, T = batch.model, batch.config.inversion.start_step
    contexts = _contexts(done)
    with lora_applied(model, _lora(batch, done)):
        z_0 = model.encode(torch.cat([d["prepare"].x for d in done]))
        trajectory = invert(_schedule(batch), z_0, T, lambda z, t, a: model.predict_noise(z, t, contexts, a),
                            on_step=lambda step: batch.notify("inversion", step, T))
    return [[z[b:b + 1] for z in trajectory] for b in range(len(batch))]


def _trajectory(done: Outputs) -> list[torch.Tensor]:
    """The items' trajectories, stacked step by step."""
    return [torch.cat(steps) for steps in zip(*(d["inversion"] for d in done), strict=True)]


def optimise(batch: Batch, done: Outputs) -> list[torch.Tensor]:
    """The method's latent edit: PBSI over T … T' for DragNeXt (z_{T'−1}); the peers edit
    z_T. Denoising continues from `config.edit_step`."""
    config, model = batch.config, batch.model
    if config.method == "warp":
        return [warp_latent(d["inversion"][-1], d["prepare"].drags, config.seed) for d in done]
    if config.method == "dragdiffusion":  # point tracking stops each item at its own iteration
        loras = _lora(batch, done) or [None] * len(done)
        return [_drag_diffusion(batch, d, lora) for d, lora in zip(done, loras, strict=True)]
    schedule, prepared = _schedule(batch), [d["prepare"] for d in done]
    trajectory, contexts = _trajectory(done), _contexts(done)
    feature_size = (prepared[0].size[0] // 2, prepared[0].size[1] // 2)
    total = config.pbsi.steps * config.pbsi.iterations
    with lora_applied(model, _lora(batch, done)), \
            feature_hooks(model.unet, config.feature_blocks(model.architecture), feature_size) as hooks:
        def forward(z: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
            return model.predict_noise(z, schedule.timestep(k), contexts, schedule.alphas[k]), hooks.pop()

        z_init = (torch.cat([warp_latent(d["inversion"][-1], d["prepare"].drags, config.seed) for d in done])
                  if config.pbsi.init == "warp" else None)
        z_edit = pbsi(trajectory, [p.drags for p in prepared], [p.editable for p in prepared], schedule,
                      config.pbsi, forward, on_iteration=lambda step: batch.notify("pbsi", step, total),
                      z_init=z_init)
    return list(z_edit.split(1))


def _drag_diffusion(batch: Batch, done: dict, lora) -> torch.Tensor:
    config, model, prep = batch.config, batch.model, done["prepare"]
    schedule = _schedule(batch)
    feature_size = (prep.size[0] // 2, prep.size[1] // 2)
    with lora_applied(model, None if lora is None else [lora]), \
            feature_hooks(model.unet, config.feature_blocks(model.architecture), feature_size) as hooks:
        def forward(z: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
            return model.predict_noise(z, schedule.timestep(k), prep.context, schedule.alphas[k]), hooks.pop()

        return drag_diffusion(done["inversion"], prep.drags, prep.editable, schedule, config.dragdiffusion,
                              forward, on_iteration=lambda step: batch.notify(
                                  "pbsi", step, config.dragdiffusion.iterations))


def denoise_latents(batch: Batch, done: Outputs) -> list[torch.Tensor]:
    """Denoise each edited latent from `config.edit_step` to z_0 next to its reference."""
    model, config, k = batch.model, batch.config, batch.config.edit_step
    with lora_applied(model, _lora(batch, done)):
        z_ref = torch.cat([d["inversion"][k] for d in done])
        z_0 = denoise_edited(model, _schedule(batch), _stack(done, "pbsi"), z_ref, k, _contexts(done),
                             config.attention, on_step=lambda step: batch.notify("denoise", k - step + 1, k))
    return list(z_0.split(1))


def edited_region(prepared: Prepared, output: OutputConfig) -> torch.Tensor | None:
    """Where the edit is kept, at the working size: all of it but what `output` pastes back
    (outside M, outside the widened swept region, outside the widened handle and final target
    regions); None when nothing is pasted."""
    if not (output.paste_background or output.paste_unswept or output.paste_path):
        return None
    region = prepared.editable if output.paste_background else torch.ones_like(prepared.editable)
    margin = max(PASTE_MARGIN_PX, round(PASTE_MARGIN * max(prepared.size)))
    if output.paste_unswept:
        region = region & dilate(swept_region(prepared.drags), margin)
    if output.paste_path:
        region = region & dilate(settled_region(prepared.drags), margin)
    return region


def paste_weight(region: np.ndarray, extent: int | None = None) -> np.ndarray:
    """The edit's weight over the input: 1 well inside `region`, feathered over a few pixels
    (1% of `extent`, by default the picture's longer side) inside its edge so no seam shows,
    and exactly 0 outside it (the input's own pixels)."""
    radius = max(1.0, 0.01 * (extent or max(region.shape)))
    blurred = Image.fromarray(region.astype(np.uint8) * 255).filter(ImageFilter.GaussianBlur(radius))
    # the blur is ½ at the edge: stretched so it reaches 0 there and 1 a radius or so inside
    return np.clip(2 * np.asarray(blurred, np.float32) / 255 - 1, 0, 1) * region


def paste_outside(edited: Image.Image, original: Image.Image, weight: np.ndarray) -> Image.Image:
    """`edited` over `original` with `paste_weight`'s weight."""
    alpha = Image.fromarray((weight * 255).round().astype(np.uint8))
    return Image.composite(edited, original.convert("RGB"), alpha)


def paste_moved(edited: Image.Image, item: EditItem, weight: np.ndarray | None,
                editable_only: bool) -> tuple[Image.Image, np.ndarray | None]:
    """`output.paste_moved`: each final target region ρ_i(1) (widened by `MOVED_EDGE_PX`,
    feathered) takes the input's own pixels through Π_i(1), i.e. the handle region moved by
    the drag's geometry; the edit keeps the rest (what is vacated, the surroundings). Returns
    the image and the edit's weight grown to cover what was pasted (within M when
    `editable_only`)."""
    height, width = item.image.height, item.image.width
    x, y = rgb_tensor(item.image), rgb_tensor(edited)
    covered = np.zeros((height, width), np.float32)
    for drag in region_drags(item, (height, width)):
        region = dilate(drag.target_region(1.0), MOVED_EDGE_PX).numpy()
        if editable_only:
            region = region & item.editable
        w = paste_weight(region)
        moved = sample(x, drag.correspondence(1.0))
        y = torch.from_numpy(w)[None, None] * moved + torch.from_numpy(1 - w)[None, None] * y
        covered = np.maximum(covered, w)
    image = Image.fromarray(y[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy())
    return image, covered if weight is None else np.maximum(weight, covered)


@dataclass
class Decoded:
    image: Image.Image  # 8-bit sRGB RGB at the input size, the input pasted back where `weight` < 1
    weight: np.ndarray | None  # the edit's weight per input pixel (`paste_weight`); None: 1 everywhere


def decode_images(batch: Batch, done: Outputs) -> list[Decoded | EditFailed]:
    """Each edited image at its input size, or `EditFailed` for one that cannot be right
    (non-finite, or flat where the input is not)."""
    x = batch.model.decode(_stack(done, "denoise"))
    images: list[Decoded | EditFailed] = []
    for item, x_b, d in zip(batch.items, x.split(1), done, strict=True):
        try:
            check_latent(x_b, "the decoded image")
            edited = tensor_to_image(x_b, *item.size)
            check_image(item.image, edited)
        except EditFailed as failed:
            images.append(failed)
            continue
        region, weight = edited_region(d["prepare"], batch.config.output), None
        if region is not None:
            width, height = item.size
            region = resize_mask(region.cpu(), (height, width)).numpy()
            if batch.config.output.paste_background:  # M at the input's resolution, not the working one
                region = region & item.editable
            weight = paste_weight(region)
            edited = paste_outside(edited, item.image, weight)
        if batch.config.output.paste_moved:
            edited, weight = paste_moved(edited, item, weight, batch.config.output.paste_background)
        images.append(Decoded(edited, weight))
    batch.notify("decode", 1, 1)
    return images
