"""`edit()` one item, `edit_batch()` many: both run the stage graph (`dragnext.graph`).

    prepare → LoRA finetune → DDIM inversion → PBSI → mutual-attention denoising → decode

`edit_batch` groups the items that can share UNet calls (`dragnext.batching`) and edits
each group together; one item's failure is that item's alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image

from dragnext.batching import batches
from dragnext.config import EditConfig
from dragnext.crop import Box, crop_box, crop_item, uncrop
from dragnext.engine import check_compile
from dragnext.graph import STAGES, ItemRun, StageCache, run_graph, stage_keys
from dragnext.instruction import EditItem, Instruction, InvalidItemError, validate_item
from dragnext.lora import Weights
from dragnext.model import DragModel
from dragnext.profiling import peak_memory, reset_peak_memory
from dragnext.resize import Size
from dragnext.stages import Batch, Callback

__all__ = ["STAGES", "EditResult", "edit", "edit_batch"]
log = logging.getLogger(__name__)


@dataclass
class EditResult:
    image: Image.Image
    item: EditItem
    config: EditConfig
    model: dict  # the `ModelSource` and its architecture
    device: str
    dtype: str
    working_size: Size
    timings: dict[str, float]  # the batch's seconds per stage
    unet_passes: dict  # the batch's
    peak_memory: dict  # the batch's
    lora_source: str  # trained | provided | stored | disabled
    batch: dict  # size, item ids, and the batch each stage ran at (smaller after a split)
    reused: list[str] = field(default_factory=list)  # stages loaded from the cache
    lora_weights: Weights | None = field(default=None, repr=False)
    weight: np.ndarray | None = field(default=None, repr=False)  # the edit's, per pixel (`paste_weight`)
    crop: Box | None = None  # the box it was edited on (`dragnext.crop`); None: the whole image

    def to_record(self) -> dict:
        return {
            "item": self.item.to_record(),
            "model": self.model,
            "device": self.device,
            "dtype": self.dtype,
            "working_size": {"height": self.working_size[0], "width": self.working_size[1]},
            "crop": None if self.crop is None else self.crop.to_record(),
            "timings_s": self.timings,
            "unet_passes": self.unet_passes,
            "peak_memory": self.peak_memory,
            "lora": self.lora_source,
            "batch": self.batch,
            "reused": sorted(self.reused),
            "postprocess": [name for name, on in self.config.output.model_dump().items()
                            if name.startswith("paste_") and on],
            "config": self.config.to_record(),
        }


def _lora_source(config: EditConfig, run: ItemRun, given: bool) -> str:
    if not config.lora.enabled:
        return "disabled"
    return "provided" if given else "stored" if "lora" in run.reused else "trained"


def _edit_group(items: list[EditItem], model: DragModel, config: EditConfig, cache: StageCache | None,
                fingerprint: str, lora_weights: list[Weights | None], notify: Callback) -> list:
    before_mb = reset_peak_memory(model.device)
    model.passes.reset()
    model.engine.mode = config.runtime.compile
    keys = [stage_keys(item, config, fingerprint) for item in items] if cache is not None else None
    given = [{"lora": w} if w is not None and config.lora.enabled else {} for w in lora_weights]
    runs, seconds = run_graph(Batch(items, model, config, notify), keys, cache, given)
    model_record = {**model.source.to_record(), "architecture": model.architecture.to_record()}
    shared = dict(model=model_record, device=str(model.device), dtype=str(model.dtype).removeprefix("torch."),
                  timings=seconds, unet_passes=model.passes.to_record(),
                  peak_memory=peak_memory(model.device, before_mb),
                  config=config)
    ids = [item.item_id for item in items]
    return [run.error if run.error is not None else EditResult(
        image=run.outputs["decode"].image, weight=run.outputs["decode"].weight, item=item,
        working_size=run.outputs["prepare"].size,
        lora_source=_lora_source(config, run, bool(g)), lora_weights=run.outputs.get("lora"),
        batch={"size": len(items), "items": ids, "stage_sizes": run.batch_sizes}, reused=run.reused, **shared)
        for item, run, g in zip(items, runs, given, strict=True)]


def edit_batch(items: list[EditItem], model: DragModel, config: EditConfig | list[EditConfig] | None = None,
               *, cache: StageCache | None = None, model_fingerprint: str | None = None,
               lora_weights: list[Weights | None] | None = None, callback: Callback | None = None,
               item_mb_at_512: float | None = None) -> list[EditResult | BaseException]:
    """Edit `items` in batches (one config, one working size, `runtime.batch_size` at a time).

    `config` is one for all or one per item. Returns per item its `EditResult` or the
    exception it failed with: `InvalidItemError` for input that cannot be edited,
    `EditFailed` for an output that cannot be right, or what its stage raised. `cache`
    keeps the stored stages' outputs, keyed by `model_fingerprint` (default: the model
    source's) and the item; `lora_weights` (per item) skip the finetune. `item_mb_at_512`, the
    peak memory per 512² item measured before, sizes the batches on CUDA (`dragnext.batching`).
    """
    configs = config if isinstance(config, list) else [config or EditConfig()] * len(items)
    for mode in {c.runtime.compile for c in configs}:
        check_compile(mode, model.device)
    weights = lora_weights or [None] * len(items)
    notify = callback or (lambda stage, done, total: None)
    out: list[EditResult | BaseException | None] = [None] * len(items)
    valid: list[int] = []
    for i, item in enumerate(items):
        try:
            items[i] = validate_item(item)
        except InvalidItemError as error:
            out[i] = error
            continue
        for warning in items[i].instruction.warnings:
            log.warning("item '%s': %s", item.item_id, warning)
        valid.append(i)
    side = {i: configs[i].working_side(model.architecture) for i in valid}
    boxes = {i: crop_box(items[i], side[i], configs[i].crop) for i in valid}
    edited = {i: items[i] if boxes[i] is None else crop_item(items[i], boxes[i]) for i in valid}
    for members in batches([edited[i] for i in valid], [configs[i] for i in valid], model, item_mb_at_512):
        group = [valid[m] for m in members]
        results = _edit_group([edited[i] for i in group], model, configs[group[0]], cache,
                              model_fingerprint or model.source.fingerprint(), [weights[i] for i in group],
                              notify)
        for i, result in zip(group, results, strict=True):
            out[i] = _uncropped(result, items[i], boxes[i])
    return out


def _uncropped(result: EditResult | BaseException, item: EditItem,
               box: Box | None) -> EditResult | BaseException:
    """A box's result as the whole input's."""
    if box is None or isinstance(result, BaseException):
        return result
    image, weight = uncrop(item, box, result.image, result.weight)
    return replace(result, image=image, weight=weight, item=item, crop=box)


def edit(image: Image.Image, instruction: Instruction, model: DragModel,
         config: EditConfig | None = None, *, item_id: str = "item",
         lora_weights: Weights | None = None, callback: Callback | None = None) -> EditResult:
    """Edit one image with DragNeXt. Raises `InvalidItemError` for input that cannot be
    edited, `EditFailed` for an output that cannot be right.

    `lora_weights` from an earlier `EditResult` skip the finetune (a retry's stored LoRA stage).
    """
    [result] = edit_batch([EditItem(image=image, instruction=instruction, item_id=item_id)], model, config,
                          lora_weights=[lora_weights], callback=callback)
    if isinstance(result, BaseException):
        raise result
    return result

