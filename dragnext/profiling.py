"""Per-stage wall times and peak memory, for each item's record."""

from __future__ import annotations

import resource
import sys
import time
from contextlib import contextmanager

import torch


class StageTimer:
    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = {}
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def stage(self, name: str):
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 4)

    def peak_memory(self) -> dict[str, float | str]:
        """Peak CUDA memory of this edit, or on CPU the process's peak resident set."""
        if self.device.type == "cuda":
            return {"kind": "cuda_max_allocated",
                    "mb": round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)}
        rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rss_bytes = rss_kb if sys.platform == "darwin" else rss_kb * 1024
        return {"kind": "process_peak_rss", "mb": round(rss_bytes / 2**20, 1)}
