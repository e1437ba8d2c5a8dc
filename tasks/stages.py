"""Prefect tasks for one item's stages. Each stage reads its inputs from the item's stored
artefacts and writes its output as one, so an item retried after a failure resumes after
its last finished stage. `edit_item` chains them and returns the item's results row."""

from __future__ import annotations

import io
import json
import os
import time
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch
from PIL import Image
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import task_run

from dragnext.config import EditConfig
from dragnext.edit import Prepared, decode_image, denoise_latent, finetune, invert_image, optimise, prepare
from dragnext.instruction import EditItem, InvalidItemError
from dragnext.metrics import image_fidelity
from dragnext.model import DragModel
from dragnext.preview import preview
from manifests.items import load_item
from manifests.storage import join, read_bytes, write_bytes
from tasks import model_cache
from tasks.artefacts import Artefacts, digest


class TransientError(RuntimeError):
    """A failure worth retrying (CUDA out of memory after the cache was emptied, I/O)."""


def is_transient(error: BaseException) -> bool:
    return isinstance(error, (TransientError, OSError, TimeoutError, ConnectionError))


@dataclass(frozen=True)
class ItemContext:
    """What every stage of one item needs: small, picklable, URIs only."""
    row: dict[str, Any]
    manifest_dir: str
    output_uri: str
    model: str
    config: dict[str, Any]

    @property
    def item_id(self) -> str:
        return self.row["item_id"]

    @property
    def item_dir(self) -> str:
        return join(self.output_uri, "items", self.item_id)

    @cached_property
    def edit_config(self) -> EditConfig:
        return EditConfig.model_validate(self.config)

    @property
    def config_hash(self) -> str:
        return digest(self.config)


_items: dict[str, EditItem] = {}  # the item being worked on in this process, by row digest


def _item(ctx: ItemContext) -> EditItem:
    key = digest(ctx.row, ctx.manifest_dir)
    if key not in _items:
        _items.clear()
        _items[key] = load_item(ctx.row, ctx.manifest_dir)
    return _items[key]


_stage_keys: dict[str, dict[str, str]] = {}  # the current item's keys, by context digest


def _keys(ctx: ItemContext, item: EditItem) -> dict[str, str]:
    """Digests of each stage's inputs: a stored artefact is reused only if its key matches.
    Hashing the image and masks once per item, not once per lookup."""
    cache_key = digest(ctx.row, ctx.manifest_dir, ctx.model, ctx.config)
    if cache_key not in _stage_keys:
        _stage_keys.clear()
        _stage_keys[cache_key] = _compute_keys(ctx, item)
    return _stage_keys[cache_key]


def _compute_keys(ctx: ItemContext, item: EditItem) -> dict[str, str]:
    c = ctx.edit_config.to_record()
    image = digest(np.asarray(item.image).tobytes())
    drags = digest([(d.type, d.handle, d.target, d.center, d.handle_mask.tobytes())
                    for d in item.instruction.drags], item.editable.tobytes())
    lora = digest(ctx.model, image, item.instruction.prompt, c["size"], c["seed"], c["lora"])
    inversion = digest(lora, c["inversion"])
    return {"lora": lora, "inversion": inversion,
            "pbsi": digest(inversion, drags, c["method"], c["pbsi"], c["dragdiffusion"], c["features"])}


def _prepared(ctx: ItemContext) -> tuple[DragModel, EditItem, Prepared]:
    model, item = model_cache.get_model(ctx.model), _item(ctx)
    return model, item, prepare(item, model, ctx.edit_config)


def _lora_weights(ctx: ItemContext) -> dict[str, torch.Tensor] | None:
    if not ctx.edit_config.lora.enabled:
        return None
    return Artefacts(ctx.item_dir).load("lora", _keys(ctx, _item(ctx))["lora"])


def _stored_latent(ctx: ItemContext, stage: str) -> torch.Tensor:
    """A stage's stored latents on this worker's device."""
    stored = Artefacts(ctx.item_dir).load(stage, _keys(ctx, _item(ctx))[stage])
    return stored["z"].to(model_cache.device())


def _trajectory(ctx: ItemContext) -> list[torch.Tensor]:
    return list(_stored_latent(ctx, "inversion").unbind(0))


def _timed_stage(name: str, ctx: ItemContext, make) -> dict:
    """Reuse the stage's artefact if its inputs are unchanged, else run `make` and store it."""
    store, key = Artefacts(ctx.item_dir), _keys(ctx, _item(ctx))[name]
    start = time.perf_counter()
    reused = store.key_of(name) == key
    if not reused:
        store.save(name, key, make())
    return {"uri": store.uri(name), "reused": reused, "seconds": time.perf_counter() - start}


@task(name="load-item", cache_policy=NO_CACHE)
def load_item_task(ctx: ItemContext) -> dict:
    return {"warnings": list(_item(ctx).instruction.warnings)}


@task(name="lora", cache_policy=NO_CACHE)
def lora_task(ctx: ItemContext) -> dict:
    if not ctx.edit_config.lora.enabled:
        return {"uri": None, "reused": False, "seconds": 0.0}

    def make():
        model, _, prep = _prepared(ctx)
        return finetune(model, prep, ctx.edit_config)

    return _timed_stage("lora", ctx, make)


@task(name="invert", cache_policy=NO_CACHE)
def invert_task(ctx: ItemContext) -> dict:
    def make():
        model, _, prep = _prepared(ctx)
        return {"z": torch.stack(invert_image(model, prep, ctx.edit_config, _lora_weights(ctx)))}

    return _timed_stage("inversion", ctx, make)


@task(name="pbsi", cache_policy=NO_CACHE)
def pbsi_task(ctx: ItemContext) -> dict:
    def make():
        model, _, prep = _prepared(ctx)
        return {"z": optimise(model, prep, _trajectory(ctx), ctx.edit_config, _lora_weights(ctx))}

    return _timed_stage("pbsi", ctx, make)


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@task(name="render", cache_policy=NO_CACHE)
def render_task(ctx: ItemContext) -> dict:
    """Mutual-attention denoising and decoding; writes the edited image."""
    start = time.perf_counter()
    model, item, prep = _prepared(ctx)
    z_0 = denoise_latent(model, prep, _trajectory(ctx), _stored_latent(ctx, "pbsi"), ctx.edit_config,
                         _lora_weights(ctx))
    uri = join(ctx.item_dir, "edited.png")
    write_bytes(uri, _png(decode_image(model, item, z_0, ctx.edit_config)))
    return {"uri": uri, "seconds": time.perf_counter() - start}


@task(name="metrics", cache_policy=NO_CACHE)
def metrics_task(ctx: ItemContext, edited_uri: str) -> dict:
    item = _item(ctx)
    edited = Image.open(io.BytesIO(read_bytes(edited_uri))).convert("RGB")
    return image_fidelity(item.image, edited, item)


@task(name="write-outputs", cache_policy=NO_CACHE)
def write_outputs_task(ctx: ItemContext, edited_uri: str, record: dict) -> dict:
    """The preview strip and the JSON record, each written whole."""
    item = _item(ctx)
    edited = Image.open(io.BytesIO(read_bytes(edited_uri))).convert("RGB")
    uris = {"image_uri": edited_uri, "preview_uri": join(ctx.item_dir, "preview.png"),
            "record_uri": join(ctx.item_dir, "record.json")}
    write_bytes(uris["preview_uri"], _png(preview(item, edited)))
    write_bytes(uris["record_uri"], json.dumps({**record, "outputs": uris}, indent=2).encode())
    return uris


def result_row(ctx: ItemContext, status: str, attempts: int, error: str | None = None,
               **fields: Any) -> dict:
    return {"item_id": ctx.item_id, "status": status, "error": error, "image_uri": None,
            "preview_uri": None, "record_uri": None, "metrics": None, "timings_s": None,
            "attempts": attempts, "config_hash": ctx.config_hash, "device": None, **fields}


def _retry_transient(task, task_run, state) -> bool:
    return is_transient(state.result(raise_on_failure=False))


@task(name="edit-item", cache_policy=NO_CACHE, retry_condition_fn=_retry_transient)
def edit_item(ctx: ItemContext) -> dict:
    """All stages of one item; returns its results row. Invalid input is a row, not a raise."""
    attempts = task_run.run_count or 1
    try:
        loaded = load_item_task(ctx)
    except InvalidItemError as error:
        return result_row(ctx, "invalid", attempts, error=str(error))
    try:
        stages = {"lora": lora_task(ctx), "inversion": invert_task(ctx), "pbsi": pbsi_task(ctx)}
        stages["render"] = render_task(ctx)
    except torch.OutOfMemoryError as error:
        model_cache.free_memory()
        raise TransientError(f"CUDA out of memory: {error}") from error
    edited_uri = stages["render"]["uri"]
    metrics = metrics_task(ctx, edited_uri)
    timings = {name: round(stage["seconds"], 4) for name, stage in stages.items()}
    record = {
        "item": _item(ctx).to_record(), "model": ctx.model, "config": ctx.config,
        "config_hash": ctx.config_hash, "device": str(model_cache.device()), "metrics": metrics,
        "timings_s": timings, "attempts": attempts, "warnings": loaded["warnings"],
        "reused": sorted(name for name, stage in stages.items() if stage.get("reused")),
        "worker": {"pid": os.getpid(), "models_loaded": model_cache.loads},
        "postprocess": ["paste_background"] if ctx.edit_config.output.paste_background else [],
    }
    uris = write_outputs_task(ctx, edited_uri, record)
    return result_row(ctx, "succeeded", attempts, metrics={k: v for k, v in metrics.items() if v is not None},
                      timings_s=timings, device=record["device"], **uris)
