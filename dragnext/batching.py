"""Which items are edited together, and how many: items batch when they share the config
(all but `runtime`) and the working size, up to `runtime.batch_size` at once.

The default on the CPU is what `make throughput` measured best on 2 cores
(docs/throughput.json). On CUDA it is what fits in the free memory (the device's, plus what
PyTorch's allocator holds cached and would reuse) at the per-item peak measured on this
worker's earlier batches, or before any at a conservative estimate. Peaks are kept per
item at 512² (`item_mb_at_512`) and scaled by the working size's pixels: an item's
activations grow with its latent's area. A size that is too high costs throughput, one
that is too low costs nothing worse than a split: a batch that runs out of memory is
halved and run again (`dragnext.graph`).
"""

from __future__ import annotations

import json

import torch

from dragnext.config import EditConfig
from dragnext.instruction import EditItem
from dragnext.model import DragModel
from dragnext.stages import item_working_size

CPU_BATCH_SIZE = 8
MAX_AUTO_BATCH = 16
# Peak CUDA memory one item adds at 512² (SD1.5, half precision, PBSI's backward through
# the UNet): a conservative estimate, scaled by pixel count.
ITEM_MB_AT_512 = 4096


def default_batch_size(device: torch.device, config: EditConfig, size: tuple[int, int],
                       item_mb_at_512: float | None = None) -> int:
    """`runtime.batch_size`, or the device's default for items of working `size` (see the
    module's docstring)."""
    if config.runtime.batch_size is not None:
        return config.runtime.batch_size
    if device.type != "cuda":
        return CPU_BATCH_SIZE
    free, _ = torch.cuda.mem_get_info(device)
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    per_item = (item_mb_at_512 or ITEM_MB_AT_512) * size[0] * size[1] / 512**2 * 2**20
    return max(1, min(MAX_AUTO_BATCH, int(0.8 * free / per_item)))


def item_mb_at_512(peak_memory: dict, batch: dict, working_size: tuple[int, int]) -> float | None:
    """A CUDA batch's peak above the models per item, at 512²: divided by the most items
    any of its stages ran with (a split batch ran fewer than it was handed), scaled by the
    working size's pixels. None where the peak is not CUDA's (the CPU teaches nothing)."""
    if peak_memory.get("kind") != "cuda_max_allocated":
        return None
    ran = max(batch.get("stage_sizes", {}).values(), default=batch["size"])
    per_item = (peak_memory["mb"] - peak_memory["before_mb"]) / max(1, ran)
    return per_item * 512**2 / (working_size[0] * working_size[1])


def dispatch_size(config: EditConfig) -> int:
    """Items to hand a worker at once: `runtime.batch_size`, or the most a worker on this
    machine's device may batch (it sizes its own batches within that)."""
    if config.runtime.batch_size is not None:
        return config.runtime.batch_size
    return MAX_AUTO_BATCH if torch.cuda.is_available() else CPU_BATCH_SIZE


def config_key(config: EditConfig) -> str:
    """Equal for configs whose items can share UNet calls (all but `runtime`)."""
    return json.dumps(config.output_record(), sort_keys=True)


def group_key(config: EditConfig, size: tuple[int, int]) -> str:
    return json.dumps([config_key(config), size])


def batches(items: list[EditItem], configs: list[EditConfig], model: DragModel,
            item_mb_at_512: float | None = None) -> list[list[int]]:
    """Indices of `items`, in batches of one config and one working size, in first-seen order."""
    groups: dict[str, list[int]] = {}
    sizes: dict[str, tuple[int, int]] = {}
    for i, (item, config) in enumerate(zip(items, configs, strict=True)):
        size = item_working_size(item, model, config)
        key = group_key(config, size)
        groups.setdefault(key, []).append(i)
        sizes[key] = size
    out = []
    for key, members in groups.items():
        count = default_batch_size(model.device, configs[members[0]], sizes[key], item_mb_at_512)
        out += [members[k:k + count] for k in range(0, len(members), count)]
    return out
