"""Counting what a piece of code asks of the device, without one: a TorchDispatchMode over
meta tensors standing for the device (host tensors stay on the CPU) sees every aten op,
every copy between host and device and every scalar read (`.item()`, `bool(t)`), each of
which would make the host wait for a GPU. Used by the tests and by `python -m
bench.op_counts` (SD1.5's counts, on a CPU box)."""

from __future__ import annotations

from collections import Counter

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
_COPIES = {aten._to_copy.default, aten.copy_.default}


def _devices(args, kwargs) -> set[str]:
    found = {a.device.type for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)}
    if isinstance(kwargs.get("device"), torch.device):
        found.add(kwargs["device"].type)
    return found


def upload(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device` without holding up the host: from pinned memory and
    non-blocking on CUDA (a copy from pageable memory waits for the device)."""
    pinned = host.pin_memory() if device.type == "cuda" else host
    return pinned.to(device, non_blocking=device.type != "cpu")


_FACTORIES = {torch.tensor, torch.as_tensor, torch.asarray, torch.Tensor.new_tensor}


class _HostData(TorchFunctionMode):
    """Tensors made from host data straight on the device (`torch.tensor(data, device=)`,
    `new_tensor`): uploads that reach the dispatcher as no copy at all."""

    def __init__(self, traffic: DeviceTraffic):
        super().__init__()
        self.traffic = traffic

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _FACTORIES:
            new = func is torch.Tensor.new_tensor
            data = args[1] if new else args[0]
            device = kwargs.get("device") or (args[0].device if new else None)
            on_device = device is not None and torch.device(device).type != "cpu"
            if on_device and not isinstance(data, torch.Tensor):
                self.traffic.uploads[self.traffic.phase] += 1
        return func(*args, **kwargs)


class DeviceTraffic(TorchDispatchMode):
    """Counts ops, host→device copies and synchronisations (device→host copies and scalar
    reads) while active; `mark(name)` starts a new phase so each can be counted on its own."""

    def __init__(self):
        super().__init__()
        self.phase = "start"
        self.ops: Counter[str] = Counter()
        self.uploads: Counter[str] = Counter()  # copies the host waits for
        self.async_uploads: Counter[str] = Counter()  # non-blocking ones (`upload`: pinned on CUDA)
        self.syncs: Counter[str] = Counter()
        self.sync_ops: list[tuple[str, str]] = []
        self._host_data = _HostData(self)

    def __enter__(self):
        self._host_data.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._host_data.__exit__(*exc)

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
            (self.async_uploads if kwargs.get("non_blocking") else self.uploads)[self.phase] += 1
        return func(*args, **kwargs)


def on_meta(model):
    """`model` (a `DragModel`) moved to the meta device: same ops, no data, no arithmetic."""
    for module in (model.unet, model.vae, *model.text_encoders):
        module.to("meta")
    model.device = torch.device("meta")
    return model
