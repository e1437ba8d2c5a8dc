"""How UNet passes run (`runtime.compile`): `off` runs the module eagerly; `inductor` runs it
through `torch.compile` (fused kernels, on CUDA or the CPU); `cuda_graphs` adds inductor's
captured CUDA graphs ("reduce-overhead": static input buffers, one graph per shape,
replayed with one launch), CUDA only.

Shapes are static (`dynamic=False`): each (samples, attention processors, grad mode,
adapters) a stage runs gets its own graph, compiled on its first call and reused by every
batch of that shape after it. Two dynamo settings hold while a compiled pass runs:
- hooks are guarded: by default dynamo ignores a forward hook registered after the first
  compile, and F's hooks (`dragnext.features`) come and go with the stages that read F;
- a UNet is compiled for many shapes, more than dynamo's default of 8 before it gives up
  and runs eagerly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from dragnext.config import Compile, ConfigError

MODES = {"inductor": "default", "cuda_graphs": "reduce-overhead"}
GRAPHS_PER_UNET = 64


def check_compile(mode: Compile, device: torch.device) -> None:
    """One line when a mode cannot run on `device`."""
    if mode == "cuda_graphs" and device.type != "cuda":
        raise ConfigError(f"invalid config: runtime.compile: cuda_graphs needs a CUDA device, and this "
                          f"one is {device.type}; use inductor or off")


@dataclass
class UNetEngine:
    """Runs one UNet in the current mode; the compiled module is made once per mode."""
    mode: Compile = "off"
    _compiled: dict[str, nn.Module] = field(default_factory=dict, repr=False)

    def __call__(self, unet: nn.Module, *args, **kwargs) -> torch.Tensor:
        """`unet(*args, **kwargs).sample`."""
        if self.mode == "off":
            return unet(*args, **kwargs).sample
        compiled = self._compiled.get(self.mode)
        if compiled is None:
            compiled = self._compiled[self.mode] = torch.compile(unet, mode=MODES[self.mode], dynamic=False)
        with torch._dynamo.config.patch(skip_nnmodule_hook_guards=False, recompile_limit=GRAPHS_PER_UNET):
            if self.mode != "cuda_graphs":
                return compiled(*args, **kwargs).sample
            # a replay overwrites the buffers of the one before: what is kept is copied out
            torch.compiler.cudagraph_mark_step_begin()
            return compiled(*args, **kwargs).sample.clone()
