"""One model per worker process, loaded on first use and reused for every item it runs.

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

import torch

from dragnext.model import DragModel, load_model

log = logging.getLogger(__name__)

_models: dict[tuple[str, str], DragModel] = {}
_device: torch.device | None = None
_lock_handle = None  # held open for the life of the process
loads = 0  # how many models this process has loaded (reported in each item's record)


def _claim_gpu() -> torch.device:
    global _lock_handle
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
        _lock_handle = handle
        return torch.device("cuda", index)
    raise RuntimeError(f"all {torch.cuda.device_count()} GPUs are claimed by other workers")


def device() -> torch.device:
    """This process's device: a GPU of its own when there are GPUs, else the CPU."""
    global _device
    if _device is None:
        _device = _claim_gpu() if torch.cuda.is_available() else torch.device("cpu")
        log.info("worker %d uses %s", os.getpid(), _device)
    return _device


def get_model(spec: str) -> DragModel:
    global loads
    key = (spec, str(device()))
    if key not in _models:
        _models[key] = load_model(spec, device=device())
        loads += 1
    return _models[key]


def free_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
