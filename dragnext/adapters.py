"""Per-item LoRA adapters inside the UNet's attention projections (SPEC §3 step 2).

A batch holds its B items' samples item-major: item b's c samples (its views while LoRA
trains, [reference, edited] while denoising) are rows b·c … b·c + c − 1. A projection's
input (B·c, L, in) is then (B, c·L, in) without a copy, and item b's update

    y = W x + bias + B_b A_b x

is a batched matmul per factor. Three forms, by what a stage needs:

- `training`: each projection becomes a `LowRankLinear` holding A_b, B_b (fp32 leaves,
  trained) beside the frozen base; the shrink and the expand run in the UNet's dtype.
- `folded` with one item: W + B A is written into a copy of each projection's weight for
  the block, and the UNet runs with exactly its own ops.
- `folded` with several items: each projection becomes a `GroupedLinear` holding every
  item's W + B_b A_b, one baddbmm in place of the base's addmm.

The weights keep peft's state-dict names (`<module>.lora_A.weight` (r, in),
`<module>.lora_B.weight` (out, r)) and its initialisation (A Kaiming-uniform, B zero,
α = r so the scale is 1). The base UNet is never modified: each form swaps modules or
weights in for its block and puts the originals back after.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
Weights = dict[str, torch.Tensor]  # one item's adapter, peft's state-dict names


def target_layers(unet: nn.Module) -> dict[str, nn.Linear]:
    """The attention projections an adapter covers, by module name, in module order."""
    return {name: module for name, module in unet.named_modules()
            if isinstance(module, nn.Linear) and name.endswith(tuple("." + t for t in TARGETS))}


@dataclass
class Adapters:
    """B adapters stacked per projection: A (B, r, in) and B (B, out, r), fp32."""
    down: dict[str, torch.Tensor]
    up: dict[str, torch.Tensor]

    @property
    def count(self) -> int:
        return next(iter(self.down.values())).shape[0]

    @classmethod
    def initial(cls, unet: nn.Module, rank: int, seed: int, count: int) -> Adapters:
        """peft's initialisation from `seed` (the same for every item), trainable."""
        device = next(unet.parameters()).device
        generator = torch.Generator().manual_seed(seed)
        down, up = {}, {}
        for name, layer in target_layers(unet).items():
            a = torch.empty(rank, layer.in_features)
            bound = 1 / math.sqrt(layer.in_features)  # kaiming_uniform_(a=√5), as nn.Linear and peft
            a.uniform_(-bound, bound, generator=generator)
            down[name] = a.expand(count, -1, -1).to(device).clone().requires_grad_(True)
            up[name] = torch.zeros(count, layer.out_features, rank, device=device, requires_grad=True)
        return cls(down, up)

    @classmethod
    def stack(cls, weights: list[Weights], device: torch.device) -> Adapters:
        names = [k.removesuffix(".lora_A.weight") for k in weights[0] if k.endswith(".lora_A.weight")]

        def stacked(n: str, part: str) -> torch.Tensor:
            return torch.stack([w[f"{n}.{part}.weight"] for w in weights]).to(device, torch.float32)

        return cls({n: stacked(n, "lora_A") for n in names}, {n: stacked(n, "lora_B") for n in names})

    def unstack(self) -> list[Weights]:
        """Each item's weights, on the CPU."""
        return [{**{f"{n}.lora_A.weight": a[i].detach().cpu().clone() for n, a in self.down.items()},
                 **{f"{n}.lora_B.weight": b[i].detach().cpu().clone() for n, b in self.up.items()}}
                for i in range(self.count)]

    def parameters(self) -> list[torch.Tensor]:
        return [*self.down.values(), *self.up.values()]

    def layers(self, unet: nn.Module) -> dict[str, nn.Linear]:
        """The projections these adapters cover; a name the UNet lacks is an error."""
        layers = target_layers(unet)
        missing = sorted(set(self.down) - set(layers))
        if missing:
            raise ValueError(f"LoRA weights name layers this UNet lacks: {', '.join(missing[:3])}")
        return {n: layers[n] for n in self.down}


def _rows(x: torch.Tensor, count: int) -> torch.Tensor:
    """(B·c, …, in) → (B, c·…, in): item b's rows together, no copy."""
    if x.shape[0] % count:
        raise ValueError(f"a batch of {x.shape[0]} samples for {count} items' adapters")
    return x.reshape(count, -1, x.shape[-1])


class LowRankLinear(nn.Module):
    """A frozen projection plus item b's trainable B_b A_b on item b's rows."""

    def __init__(self, base: nn.Linear, down: torch.Tensor, up: torch.Tensor):
        super().__init__()
        self.base = base
        self.down_t, self.up_t = down.transpose(1, 2), up.transpose(1, 2)  # (B, in, r), (B, r, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        # fp16's range flushes the small gradients of a young adapter to zero; bf16's does not
        dtype = torch.float32 if x.dtype == torch.float16 else x.dtype
        h = torch.bmm(_rows(x, self.down_t.shape[0]).to(dtype), self.down_t.to(dtype))  # shrink
        y_rows = torch.baddbmm(_rows(y, h.shape[0]).to(dtype), h, self.up_t.to(dtype))  # expand
        return y_rows.to(y.dtype).view(y.shape)


class GroupedLinear(nn.Module):
    """A projection with a weight per item: y = x W_bᵀ + bias on item b's rows."""

    def __init__(self, weight_t: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.weight_t, self.bias = weight_t, bias  # (B, in, out), (out,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = _rows(x, self.weight_t.shape[0])
        y = (torch.bmm(rows, self.weight_t) if self.bias is None
             else torch.baddbmm(self.bias, rows, self.weight_t))
        return y.view(*x.shape[:-1], y.shape[-1])


@contextmanager
def _swapped(unet: nn.Module, modules: dict[str, nn.Module]):
    originals = {name: unet.get_submodule(name) for name in modules}
    try:
        for name, module in modules.items():
            unet.set_submodule(name, module)
        yield
    finally:
        for name, module in originals.items():
            unet.set_submodule(name, module)


@contextmanager
def training(unet: nn.Module, adapters: Adapters):
    """The UNet with every item's adapter trainable on its rows for the block."""
    with _swapped(unet, {n: LowRankLinear(layer, adapters.down[n], adapters.up[n])
                         for n, layer in adapters.layers(unet).items()}):
        yield


def _folded_weight(layer: nn.Linear, down: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Wᵀ + (B_b A_b)ᵀ per item, (B, in, out), in the layer's dtype."""
    w_t = layer.weight.detach().t().float().expand(down.shape[0], -1, -1)
    update = torch.baddbmm(w_t, down.detach().transpose(1, 2), up.detach().transpose(1, 2))
    return update.to(layer.weight.dtype)


@contextmanager
def _weights_swapped(layers: dict[str, nn.Linear], weights: dict[str, torch.Tensor]):
    originals = {name: layer.weight for name, layer in layers.items()}
    try:
        for name, layer in layers.items():
            layer.weight = nn.Parameter(weights[name], requires_grad=False)
        yield
    finally:
        for name, layer in layers.items():
            layer.weight = originals[name]


@contextmanager
def folded(unet: nn.Module, adapters: Adapters):
    """The UNet with every item's adapter folded into its projections for the block: a copy
    of the weights for one item (the UNet's own ops), a `GroupedLinear` each for several."""
    layers = adapters.layers(unet)
    weights = {n: _folded_weight(layer, adapters.down[n], adapters.up[n]) for n, layer in layers.items()}
    if adapters.count == 1:
        with _weights_swapped(layers, {n: w[0].t() for n, w in weights.items()}):
            yield
        return
    with _swapped(unet, {n: GroupedLinear(weights[n], layer.bias) for n, layer in layers.items()}):
        yield
