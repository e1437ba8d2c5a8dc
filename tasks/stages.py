"""A batch of items through the library's stage graph (`dragnext.edit.edit_batch`), with
each stored stage's output kept under the item's folder (`tasks.stage_store`), so an item
retried after a failure resumes after its last finished stage, whatever its batch-mates
do. `edit_items` returns one results row per item: invalid input and an item's failure
are that item's row, never an exception. Nothing here knows Prefect: `tasks.batch_task`
adapts it."""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import psutil
import torch
from PIL import Image

from dragnext.config import EditConfig
from dragnext.edit import EditResult, edit_batch
from dragnext.fingerprint import digest
from dragnext.instruction import EditItem, InvalidItemError
from dragnext.metrics import image_fidelity, warp_agreement
from dragnext.model_source import ModelSource
from dragnext.photo_file import SUFFIX, Provenance, edited_file
from dragnext.preview import preview
from dragnext.review import review_reasons
from manifests.items import load_item
from manifests.storage import is_transient, join, write_bytes
from manifests.uris import UriPolicy
from tasks.stage_store import StageStore
from tasks.worker import WorkerState


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
    model: ModelSource
    config: dict[str, Any]
    allowed_prefixes: tuple[str, ...] = field(default=())
    model_fingerprint: str = ""  # `dragnext.fingerprint`: which weights, not which name
    input_digest: str | None = None  # `manifests.digest`: recorded in the row, checked on resume
    previous_attempts: int = 0
    worker_losses: tuple[str, ...] = ()  # the workers that died editing it (`tasks.batch_task`)

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
        return digest(self.edit_config.output_record())


def result_row(ctx: ItemContext, status: str, attempts: int, error: str | None = None,
               **fields: Any) -> dict:
    return {"item_id": ctx.item_id, "status": status, "error": error, "image_uri": None,
            "image_format": None, "preview_uri": None, "record_uri": None, "metrics": None, "timings_s": None,
            "attempts": attempts, "config_hash": ctx.config_hash, "device": None,
            "needs_review": None, "review_reasons": None,
            "input_digest": ctx.input_digest if status == "succeeded" else None, **fields}


def _parent_of(pid: int) -> int | None:
    try:
        return psutil.Process(pid).ppid()
    except psutil.Error:
        return None


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


Outcome = tuple[dict, BaseException | None]  # an item's row, and what it failed with (if it did)


def failed_outcome(ctx: ItemContext, attempt: int, error: BaseException) -> Outcome:
    return result_row(ctx, "failed", attempt, error=f"{type(error).__name__}: {error}"), error


def _write_outputs(ctx: ItemContext, result: EditResult, worker: WorkerState, attempt: int) -> dict:
    """The item's image, preview and record; its results row."""
    item, edited = result.item, result.image
    metrics = {**image_fidelity(item.image, edited, item), **warp_agreement(item.image, edited, item)}
    reasons = review_reasons(metrics, ctx.edit_config.review)
    fmt = ctx.edit_config.output.format
    uris = {"image_uri": join(ctx.item_dir, "edited" + SUFFIX[fmt]),
            "preview_uri": join(ctx.item_dir, "preview.png"), "record_uri": join(ctx.item_dir, "record.json")}
    record = {
        **result.to_record(), "model_fingerprint": ctx.model_fingerprint,
        "input_digest": ctx.input_digest, "config_hash": ctx.config_hash, "metrics": metrics,
        "attempts": attempt, "warnings": list(item.instruction.warnings),
        "worker_losses": list(ctx.worker_losses),
        "review": {"needs_review": bool(reasons), "reasons": reasons},
        "worker": {"pid": os.getpid(), "parent_pid": os.getppid(), "models_loaded": worker.loads,
                   # the run's process's parent: on a work pool, the Prefect worker that took the shard
                   "grandparent_pid": _parent_of(os.getppid())},
        "outputs": uris,
    }
    write_bytes(uris["image_uri"], edited_file(result, Provenance(item.item_id, ctx.config_hash)))
    write_bytes(uris["preview_uri"], _png(preview(item, edited)))
    write_bytes(uris["record_uri"], json.dumps(record, indent=2).encode())
    return result_row(ctx, "succeeded", attempt, metrics={k: v for k, v in metrics.items() if v is not None},
                      timings_s=result.timings, device=result.device, needs_review=bool(reasons),
                      image_format=fmt,
                      review_reasons="; ".join(reasons) or None, **uris)


def edit_items(contexts: list[ItemContext], worker: WorkerState, attempt: int) -> list[Outcome]:
    """Every item of the batch through the stages together, then each one's outputs; one
    outcome per context, in order. CUDA out of memory for an item alone (its batch was
    already split down to it) is a `TransientError`: worth another attempt."""
    outcomes: dict[str, Outcome] = {}
    loaded: list[tuple[ItemContext, EditItem]] = []
    for ctx in contexts:
        try:
            loaded.append((ctx, load_item(ctx.row, ctx.policy)))
        except InvalidItemError as error:
            outcomes[ctx.item_id] = result_row(ctx, "invalid", attempt, error=str(error)), None
    if loaded:
        first = loaded[0][0]
        model = worker.model(first.model)
        results = edit_batch([item for _, item in loaded], model, [ctx.edit_config for ctx, _ in loaded],
                             cache=StageStore(first.output_uri), model_fingerprint=first.model_fingerprint,
                             item_mb_at_512=worker.item_mb_at_512)
        for (ctx, _), result in zip(loaded, results, strict=True):
            if isinstance(result, torch.OutOfMemoryError):
                worker.free_memory()
                result = TransientError(f"CUDA out of memory: {result}")
            if isinstance(result, BaseException):
                outcomes[ctx.item_id] = failed_outcome(ctx, attempt, result)
                continue
            worker.measured(result.peak_memory, result.batch, result.working_size)
            try:
                outcomes[ctx.item_id] = _write_outputs(ctx, result, worker, attempt), None
            except Exception as error:  # a full disk, an unreachable store: this item's row says so
                outcomes[ctx.item_id] = failed_outcome(ctx, attempt, error)
    return [outcomes[ctx.item_id] for ctx in contexts]
