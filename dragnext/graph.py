"""The stage graph of an edit, and the one runner of it that `edit()`, `edit_batch()` and
the batch layer share.

Each stage declares what it reads of the item, the config sections its output depends on
and the stored stages whose outputs it uses. A stage's key digests exactly these, chained
through those stages, so a stored output is reused only while everything it was made from
is unchanged. A config section that no stage declares (a new peer's, say) counts for the
method's stage and so for every stage after it: a new option can make a key change too
often, never too rarely. `NOT_OUTPUT` (`runtime`: how items are run, `review`: how an output is
judged) is in no key.

The runner takes a `Batch` through the stages. An item whose output is stored (the
caller's `StageCache`, by key) is not computed again; the others are computed together.
A stage that raises for the batch is run again item by item, so only the item that raises
fails; CUDA out of memory splits the batch in halves first. An item whose latent is not
finite fails there with its own error; its batch-mates go on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from dragnext.config import NOT_OUTPUT, EditConfig
from dragnext.fingerprint import digest
from dragnext.instruction import EditItem
from dragnext.output_check import check_latent
from dragnext.stages import (
    Batch,
    Outputs,
    decode_images,
    denoise_latents,
    finetune,
    invert_images,
    optimise,
    prepare,
)


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[Batch, Outputs], list]
    reads: tuple[str, ...]  # of the item: image, prompt, drags
    config: tuple[str, ...]  # config sections (top-level keys) its output depends on
    after: tuple[str, ...] = ()  # stored stages whose outputs it uses
    stored: bool = False  # costs UNet passes: kept, so a retry resumes after it
    method: bool = False  # the method's own stage: owns every config section no stage names


GRAPH = (
    Stage("prepare", prepare, reads=("image", "drags", "prompt"), config=("size",)),
    Stage("lora", finetune, reads=("image", "prompt"), config=("size", "seed", "lora"), stored=True),
    Stage("inversion", invert_images, reads=("image", "prompt"), config=("size", "inversion"),
          after=("lora",), stored=True),
    Stage("pbsi", optimise, reads=("drags",), config=("method", "seed", "pbsi", "dragdiffusion", "features"),
          after=("lora", "inversion"), stored=True, method=True),
    Stage("denoise", denoise_latents, reads=("prompt",), config=("attention",), after=("pbsi",), stored=True),
    Stage("decode", decode_images, reads=("image", "drags"), config=("output",), after=("denoise",)),
)
STAGES = tuple(stage.name for stage in GRAPH)


def unclaimed_sections(config: EditConfig) -> list[str]:
    claimed = {s for stage in GRAPH for s in stage.config} | set(NOT_OUTPUT)
    return sorted(set(config.to_record()) - claimed)


def item_parts(item: EditItem) -> dict[str, str]:
    """Digests of what the stages read of an item."""
    drags = [(d.type, d.handle, d.target, d.center, d.axis, d.factors, d.handle_mask.tobytes())
             for d in item.instruction.drags]
    return {"image": digest(np.asarray(item.image.convert("RGB")).tobytes()),
            "prompt": digest(item.instruction.prompt),
            "drags": digest(drags, item.editable.tobytes())}


def stage_keys(item: EditItem, config: EditConfig, model_fingerprint: str) -> dict[str, str]:
    """Each stage's key for this item, config and model (`dragnext.fingerprint`)."""
    record, parts = config.to_record(), item_parts(item)
    keys: dict[str, str] = {}
    for stage in GRAPH:
        sections = [*stage.config, *(unclaimed_sections(config) if stage.method else [])]
        keys[stage.name] = digest(stage.name, model_fingerprint, [parts[r] for r in stage.reads],
                                  {s: record[s] for s in sections}, [keys[a] for a in stage.after])
    return keys


def to_tensors(name: str, output: Any) -> dict[str, torch.Tensor]:
    """A stored stage's output as named tensors: LoRA weights as they are, latents as `z`."""
    if isinstance(output, dict):
        return output
    return {"z": torch.stack(output) if isinstance(output, list) else output}


def from_tensors(name: str, tensors: dict[str, torch.Tensor], device: torch.device) -> Any:
    if name == "lora":
        return tensors
    z = tensors["z"].to(device)
    return list(z.unbind(0)) if name == "inversion" else z


class StageCache(Protocol):
    """Where stored stage outputs live (the batch layer backs it with its store)."""

    def load(self, item_id: str, stage: str, key: str) -> dict[str, torch.Tensor] | None: ...

    def save(self, item_id: str, stage: str, key: str, tensors: dict[str, torch.Tensor]) -> None: ...


@dataclass
class ItemRun:
    """One item's way through the graph."""
    outputs: dict[str, Any]
    error: BaseException | None = None
    reused: list[str] = field(default_factory=list)
    batch_sizes: dict[str, int] = field(default_factory=dict)  # stage → how many items it ran with


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _finite(stage: Stage, output: Any) -> BaseException | None:
    """An `EditFailed` for a stored stage's output holding NaN or infinity."""
    if not stage.stored or output is None:
        return None
    try:
        for tensor in to_tensors(stage.name, output).values():
            check_latent(tensor, f"the {stage.name} stage's output")
    except Exception as failed:
        return failed
    return None


def _compute(stage: Stage, batch: Batch, runs: list[ItemRun], members: list[int]) -> dict[int, Any]:
    """Stage outputs (or errors) of the items `members`, together where they can be."""
    sub = Batch([batch.items[i] for i in members], batch.model, batch.config, batch.notify)
    try:
        outputs = stage.run(sub, [runs[i].outputs for i in members])
        for i in members:
            runs[i].batch_sizes[stage.name] = len(members)
        return dict(zip(members, outputs, strict=True))
    except torch.OutOfMemoryError as error:
        if len(members) == 1:
            return {members[0]: error}
        if batch.model.device.type == "cuda":
            torch.cuda.empty_cache()
        half = len(members) // 2
        return {**_compute(stage, batch, runs, members[:half]),
                **_compute(stage, batch, runs, members[half:])}
    except Exception as error:
        if len(members) == 1:
            return {members[0]: error}
        found: dict[int, Any] = {}
        for i in members:  # which of them raises: each alone
            found.update(_compute(stage, batch, runs, [i]))
        return found


def run_graph(batch: Batch, keys: list[dict[str, str]] | None = None, cache: StageCache | None = None,
              given: list[dict[str, Any]] | None = None) -> tuple[list[ItemRun], dict[str, float]]:
    """Every stage for every item of `batch`: the items' runs and the stages' seconds (the
    device synchronised). `given` outputs (e.g. stored LoRA weights) are used as they are."""
    runs = [ItemRun(outputs=dict(g)) for g in (given or [{} for _ in batch.items])]
    seconds: dict[str, float] = {}
    for stage in GRAPH:
        _sync(batch.model.device)
        start = time.perf_counter()
        todo = []
        for i, run in enumerate(runs):
            if run.error is not None or stage.name in run.outputs:
                continue
            stored = cache.load(batch.items[i].item_id, stage.name, keys[i][stage.name]) \
                if cache is not None and stage.stored else None
            if stored is not None:
                run.outputs[stage.name] = from_tensors(stage.name, stored, batch.model.device)
                run.reused.append(stage.name)
            else:
                todo.append(i)
        if todo:
            with batch.model.passes.stage(stage.name):
                computed = _compute(stage, batch, runs, todo)
            for i, output in computed.items():
                error = output if isinstance(output, BaseException) else _finite(stage, output)
                if error is not None:
                    runs[i].error = error
                    continue
                runs[i].outputs[stage.name] = output
                if cache is not None and stage.stored and output is not None:
                    cache.save(batch.items[i].item_id, stage.name, keys[i][stage.name],
                               to_tensors(stage.name, output))
        _sync(batch.model.device)
        seconds[stage.name] = round(time.perf_counter() - start, 4)
    return runs, seconds
