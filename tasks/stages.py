"""One item through the library's stages (`dragnext.edit.STAGES`), with each latent stage's
output stored under the item's folder, so an item retried after a failure resumes after
its last finished stage. `edit_item` returns the item's results row; invalid input is a
row, never an exception. Nothing here knows Prefect: `tasks.item_task` adapts it."""

from __future__ import annotations

import io
import json
import os
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import psutil
import torch
from PIL import Image

from dragnext.config import EditConfig
from dragnext.edit import STAGES, run_stage
from dragnext.instruction import EditItem, InvalidItemError
from dragnext.metrics import image_fidelity
from dragnext.model import DragModel
from dragnext.preview import preview
from manifests.digest import digest
from manifests.items import load_item
from manifests.storage import is_transient, join, write_bytes
from manifests.uris import UriPolicy
from tasks.stage_store import StageStore, from_tensors, to_tensors
from tasks.worker import WorkerState

STORED_STAGES = ("lora", "inversion", "pbsi", "denoise")


class TransientError(RuntimeError):
    """A failure worth retrying (CUDA out of memory after the cache was emptied)."""


def is_retryable(error: BaseException) -> bool:
    return isinstance(error, TransientError) or is_transient(error)


@dataclass(frozen=True)
class ItemContext:
    """What one item needs: small, picklable, URIs only."""
    row: dict[str, Any]
    manifest_dir: str
    output_uri: str
    model: str
    config: dict[str, Any]
    allowed_prefixes: tuple[str, ...] = field(default=())
    model_fingerprint: str = ""  # `dragnext.fingerprint`: which weights, not which name
    input_digest: str | None = None  # `manifests.digest`: recorded in the row, checked on resume
    previous_attempts: int = 0

    @property
    def item_id(self) -> str:
        return self.row["item_id"]

    @property
    def item_dir(self) -> str:
        return join(self.output_uri, "items", self.item_id)

    @property
    def policy(self) -> UriPolicy:
        return UriPolicy(self.manifest_dir, self.allowed_prefixes)

    @cached_property
    def edit_config(self) -> EditConfig:
        return EditConfig.model_validate(self.config)

    @property
    def config_hash(self) -> str:
        return digest(self.config)


def result_row(ctx: ItemContext, status: str, attempts: int, error: str | None = None,
               **fields: Any) -> dict:
    return {"item_id": ctx.item_id, "status": status, "error": error, "image_uri": None,
            "preview_uri": None, "record_uri": None, "metrics": None, "timings_s": None,
            "attempts": attempts, "config_hash": ctx.config_hash, "device": None,
            "input_digest": ctx.input_digest if status == "succeeded" else None, **fields}


def stage_keys(ctx: ItemContext, item: EditItem) -> dict[str, str]:
    """Digests of each stored stage's inputs: a stored output is reused only if its key matches."""
    c = ctx.edit_config.to_record()
    image = digest(np.asarray(item.image).tobytes())
    drags = digest([(d.type, d.handle, d.target, d.center, d.axis, d.handle_mask.tobytes())
                    for d in item.instruction.drags], item.editable.tobytes())
    lora = digest(ctx.model_fingerprint or ctx.model, image, item.instruction.prompt, c["size"], c["seed"],
                  c["lora"])
    inversion = digest(lora, c["inversion"])
    pbsi = digest(inversion, drags, c["method"], c["pbsi"], c["dragdiffusion"], c["features"])
    return {"lora": lora, "inversion": inversion, "pbsi": pbsi, "denoise": digest(pbsi, c["attention"])}


def _parent_of(pid: int) -> int | None:
    try:
        return psutil.Process(pid).ppid()
    except psutil.Error:
        return None


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _run_stages(ctx: ItemContext, item: EditItem, model: DragModel) -> tuple[dict, dict, list[str]]:
    """Every stage's output, reusing stored ones; (outputs, seconds per stage, reused)."""
    config = ctx.edit_config
    store, keys = StageStore(ctx.item_dir), stage_keys(ctx, item)
    done: dict[str, Any] = {}
    timings: dict[str, float] = {}
    reused: list[str] = []
    for name in STAGES:
        start = time.perf_counter()
        stored = store.load(name, keys[name]) if name in STORED_STAGES else None
        if stored is not None:
            done[name] = from_tensors(name, stored, model.device)
            reused.append(name)
        else:
            done[name] = run_stage(name, model, item, config, done)
            if name in STORED_STAGES and done[name] is not None:
                store.save(name, keys[name], to_tensors(name, done[name]))
        timings[name] = round(time.perf_counter() - start, 4)
    return done, timings, reused


def edit_item(ctx: ItemContext, worker: WorkerState, attempt: int) -> dict:
    """All stages of one item, then its image, preview and record; returns its results row.
    Raises only for failures (transient ones are worth another attempt)."""
    try:
        item = load_item(ctx.row, ctx.policy)
    except InvalidItemError as error:
        return result_row(ctx, "invalid", attempt, error=str(error))
    model = worker.model(ctx.model)
    model.passes.reset()
    try:
        done, timings, reused = _run_stages(ctx, item, model)
    except torch.OutOfMemoryError as error:
        worker.free_memory()
        raise TransientError(f"CUDA out of memory: {error}") from error
    edited = done["decode"]
    metrics = image_fidelity(item.image, edited, item)
    uris = {"image_uri": join(ctx.item_dir, "edited.png"), "preview_uri": join(ctx.item_dir, "preview.png"),
            "record_uri": join(ctx.item_dir, "record.json")}
    record = {
        "item": item.to_record(), "model": ctx.model, "model_fingerprint": ctx.model_fingerprint,
        "input_digest": ctx.input_digest, "config": ctx.config,
        "config_hash": ctx.config_hash, "device": str(worker.device), "metrics": metrics,
        "timings_s": timings, "unet_passes": model.passes.to_record(), "attempts": attempt,
        "warnings": list(item.instruction.warnings), "reused": sorted(reused),
        "worker": {"pid": os.getpid(), "parent_pid": os.getppid(), "models_loaded": worker.loads,
                   # the run's process's parent: on a work pool, the Prefect worker that took the shard
                   "grandparent_pid": _parent_of(os.getppid())},
        "postprocess": ["paste_background"] if ctx.edit_config.output.paste_background else [],
        "outputs": uris,
    }
    write_bytes(uris["image_uri"], _png(edited))
    write_bytes(uris["preview_uri"], _png(preview(item, edited)))
    write_bytes(uris["record_uri"], json.dumps(record, indent=2).encode())
    return result_row(ctx, "succeeded", attempt, metrics={k: v for k, v in metrics.items() if v is not None},
                      timings_s=timings, device=record["device"], **uris)
