"""Per-stage wall times, UNet passes and peak memory, for each item's record."""

from __future__ import annotations

import resource
import sys
from contextlib import contextmanager
from functools import partial

import torch


def reset_peak_memory(device: torch.device) -> float:
    """Start measuring a peak; returns the CUDA memory already allocated (the models), in MB."""
    if device.type != "cuda":
        return 0.0
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device) / 2**20


def peak_memory(device: torch.device, before_mb: float = 0.0) -> dict[str, float | str]:
    """Peak CUDA memory since `reset_peak_memory` (and what was allocated before it), or on
    CPU the process's peak resident set."""
    if device.type == "cuda":
        return {"kind": "cuda_max_allocated", "mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1),
                "before_mb": round(before_mb, 1)}
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_bytes = rss_kb if sys.platform == "darwin" else rss_kb * 1024
    return {"kind": "process_peak_rss", "mb": round(rss_bytes / 2**20, 1)}


class PassCounter:
    """UNet forward and backward passes per stage: a cost model that needs no GPU.

    One call of the UNet is one pass whatever its batch; `*_samples` add up the batch
    sizes (LoRA trains on `lora.batch_size` views, denoising runs the reference and the
    edit as a batch of 2). A backward is counted when the gradient reaches the UNet's output.
    """

    def __init__(self):
        self.current = "other"
        self.counts: dict[str, dict[str, int]] = {}

    def reset(self) -> None:
        self.counts = {}

    @contextmanager
    def stage(self, name: str):
        outer, self.current = self.current, name
        try:
            yield
        finally:
            self.current = outer

    def _add(self, stage: str, kind: str, batch: int) -> None:
        counts = self.counts.setdefault(stage, dict.fromkeys(
            ("forward", "backward", "forward_samples", "backward_samples"), 0))
        counts[kind] += 1
        counts[f"{kind}_samples"] += batch

    def _on_backward(self, stage: str, batch: int, grad: torch.Tensor) -> None:
        self._add(stage, "backward", batch)

    def count(self, output: torch.Tensor) -> None:
        """Count one UNet forward producing `output` (and its backward, if one comes)."""
        batch = output.shape[0]
        self._add(self.current, "forward", batch)
        # A pass traced into a larger graph cannot count its backward from a tensor hook (dynamo
        # refuses a hook's side effects); `dragnext.engine` compiles the UNet alone, so here
        # the counting runs eagerly, and only a graph made of a whole iteration would miss it.
        if output.requires_grad and not torch.compiler.is_compiling():
            output.register_hook(partial(self._on_backward, self.current, batch))

    def totals(self) -> dict[str, int]:
        return {kind: sum(c[kind] for c in self.counts.values())
                for kind in ("forward", "backward", "forward_samples", "backward_samples")}

    def to_record(self) -> dict:
        return {"by_stage": {name: dict(c) for name, c in self.counts.items()}, "total": self.totals()}
