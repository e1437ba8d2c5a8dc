"""Counting what a piece of code asks of the device, without one: a TorchDispatchMode over
meta tensors standing for the device (host tensors stay on the CPU) sees every aten op,
every copy between host and device and every scalar read (`.item()`, `bool(t)`), each of
which would make the host wait for a GPU. Used by the tests and by `python -m
bench.op_counts` (SD1.5's counts, on a CPU box)."""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
_COPIES = {aten._to_copy.default, aten.copy_.default}


def _devices(args, kwargs) -> set[str]:
    found = {a.device.type for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)}
    if isinstance(kwargs.get("device"), torch.device):
        found.add(kwargs["device"].type)
    return found


class DeviceTraffic(TorchDispatchMode):
    """Counts ops, host→device copies and synchronisations (device→host copies and scalar
    reads) while active; `mark(name)` starts a new phase so each can be counted on its own."""

    def __init__(self):
        super().__init__()
        self.phase = "start"
        self.ops: Counter[str] = Counter()
        self.uploads: Counter[str] = Counter()
        self.syncs: Counter[str] = Counter()
        self.sync_ops: list[tuple[str, str]] = []

    def mark(self, phase: str) -> None:
        self.phase = phase

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.ops[self.phase] += 1
        if func is aten._local_scalar_dense.default and args[0].device.type == "meta":  # .item(), bool(t)
            self.syncs[self.phase] += 1
            self.sync_ops.append((self.phase, str(func)))
            return 0.0 if args[0].dtype.is_floating_point else 0
        if func in _COPIES and _devices(args, kwargs) == {"cpu", "meta"}:
            src = args[1] if func is aten.copy_.default else args[0]
            if src.device.type == "meta":  # device → host
                self.syncs[self.phase] += 1
                self.sync_ops.append((self.phase, str(func)))
                if func is aten._to_copy.default:
                    return torch.zeros(src.shape, dtype=kwargs.get("dtype") or src.dtype)
                return args[0]
            self.uploads[self.phase] += 1
        return func(*args, **kwargs)


def on_meta(model):
    """`model` (a `DragModel`) moved to the meta device: same ops, no data, no arithmetic."""
    for module in (model.unet, model.vae, *model.text_encoders):
        module.to("meta")
    model.device = torch.device("meta")
    return model
