"""What one worker process keeps across the items it edits: its device and its models.

On a machine with several GPUs each worker process claims one GPU for its lifetime, with
an exclusive lock on a file named after the GPU's UUID, so two processes never share one
(also when each worker sees its GPU as cuda:0 through CUDA_VISIBLE_DEVICES).
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
from pathlib import Path
from typing import IO

import torch

from dragnext.batching import item_mb_at_512
from dragnext.model import DragModel, ModelSource, load_model

log = logging.getLogger(__name__)


def _claim_gpu() -> tuple[torch.device, IO]:
    folder = Path(tempfile.gettempdir()) / "dragnext-gpu-locks"
    folder.mkdir(exist_ok=True)
    for index in range(torch.cuda.device_count()):
        uuid = str(getattr(torch.cuda.get_device_properties(index), "uuid", index))
        handle = open(folder / f"{uuid}.lock", "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        return torch.device("cuda", index), handle
    raise RuntimeError(f"all {torch.cuda.device_count()} GPUs are claimed by other workers")


class WorkerState:
    """One per worker process: the device it claimed and the models it loaded, reused for
    every item it edits."""

    def __init__(self) -> None:
        self._device: torch.device | None = None
        self._lock: IO | None = None  # held open for the life of the process
        self._models: dict[ModelSource, DragModel] = {}
        self.loads = 0
        # CUDA: the largest peak per 512² item of its batches so far (`dragnext.batching`)
        self.item_mb_at_512: float | None = None

    def measured(self, peak_memory: dict, batch: dict, working_size: tuple[int, int]) -> None:
        """Learn the per-item memory from a batch's peak above the models, to size the next batches."""
        found = item_mb_at_512(peak_memory, batch, working_size)
        if found is not None:
            self.item_mb_at_512 = max(self.item_mb_at_512 or 0.0, found)

    @property
    def device(self) -> torch.device:
        """A GPU of its own when there are GPUs, else the CPU."""
        if self._device is None:
            if torch.cuda.is_available():
                self._device, self._lock = _claim_gpu()
            else:
                self._device = torch.device("cpu")
            log.info("worker %d uses %s", os.getpid(), self._device)
        return self._device

    def model(self, source: ModelSource) -> DragModel:
        if source not in self._models:
            self._models[source] = load_model(source, device=self.device)
            self.loads += 1
        return self._models[source]

    def free_memory(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
