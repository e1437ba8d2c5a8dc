"""Per-image LoRA (SPEC §3 step 2), one adapter per item of a batch: train B adapters on
the UNet's attention projections in one pass, return their weights, apply them per sample.

peft's LoRA layers run one set of active adapters for the whole batch (its mixed-adapter
batches are inference only), so items batched through it would share one adapter. Here
each targeted projection gets a forward hook adding sample n's own low-rank update,

    y_n = W x_n + B_{a(n)} A_{a(n)} x_n,    a(n) = n mod B,

with batches laid out as whole copies of the item order (the [reference…, edited…] halves
of mutual attention, LoRA training view-major). The loss is a sum of per-item terms and
AdamW is elementwise, so each adapter trains exactly as it would alone. The weights keep
peft's state-dict names (`<module>.lora_A.weight`, `<module>.lora_B.weight`) and its
initialisation (A Kaiming-uniform, B zero, α = r so the scale is 1); the base UNet is never
modified: hooks are removed, nothing is fused.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from dragnext.conditioning import Conditioning
from dragnext.config import LoraConfig
from dragnext.model import DragModel
from dragnext.prediction import training_target

TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
Weights = dict[str, torch.Tensor]  # one item's adapter, peft's state-dict names


def target_layers(unet: nn.Module) -> dict[str, nn.Linear]:
    """The attention projections an adapter covers, by module name, in module order."""
    return {name: module for name, module in unet.named_modules()
            if isinstance(module, nn.Linear) and name.endswith(tuple("." + t for t in TARGETS))}


class Adapters:
    """B adapters stacked per layer: A (B, r, in) and B (B, out, r)."""

    def __init__(self, down: dict[str, torch.Tensor], up: dict[str, torch.Tensor]):
        self.down, self.up = down, up

    @classmethod
    def initial(cls, unet: nn.Module, rank: int, seed: int, count: int) -> Adapters:
        """peft's initialisation from `seed` (the same for every item), trainable fp32."""
        layers = target_layers(unet)
        device = next(unet.parameters()).device
        generator = torch.Generator().manual_seed(seed)
        down, up = {}, {}
        for name, layer in layers.items():
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
            return torch.stack([w[f"{n}.{part}.weight"] for w in weights]).to(device).float()

        return cls({n: stacked(n, "lora_A") for n in names}, {n: stacked(n, "lora_B") for n in names})

    def unstack(self) -> list[Weights]:
        count = next(iter(self.down.values())).shape[0]
        return [{**{f"{n}.lora_A.weight": a[i].detach().cpu().clone() for n, a in self.down.items()},
                 **{f"{n}.lora_B.weight": b[i].detach().cpu().clone() for n, b in self.up.items()}}
                for i in range(count)]

    def parameters(self) -> list[torch.Tensor]:
        return [*self.down.values(), *self.up.values()]

    @contextmanager
    def applied(self, unet: nn.Module):
        layers = target_layers(unet)
        missing = sorted(set(self.down) - set(layers))
        if missing:
            raise ValueError(f"LoRA weights name layers this UNet lacks: {', '.join(missing[:3])}")
        handles = [layers[n].register_forward_hook(_per_sample(self.down[n], self.up[n])) for n in self.down]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()


def _per_sample(A: torch.Tensor, B: torch.Tensor):
    def add(_module, inputs, output):
        x = inputs[0]
        count = A.shape[0]
        x = x.reshape(x.shape[0] // count, count, -1, x.shape[-1]).float()  # (copies, B, tokens, in)
        h = torch.einsum("mbli,bri->mblr", x, A)
        return output + torch.einsum("mblr,bor->mblo", h, B).reshape(output.shape).to(output.dtype)
    return add


@contextmanager
def lora_applied(model: DragModel, weights: list[Weights | None] | None):
    """Run the block with item i's adapter on the samples n ≡ i (mod B); no-op for None."""
    if not weights or any(w is None for w in weights):
        if weights and any(w is not None for w in weights):
            raise ValueError("LoRA weights for some items of a batch and not others")
        yield
        return
    with Adapters.stack(weights, model.device).applied(model.unet):
        yield


def augment(x: torch.Tensor, batch: int, generator: torch.Generator) -> torch.Tensor:
    """`batch` random crops (80–100% of each side) resized back, each flipped with p = ½."""
    _, _, h, w = x.shape
    views = []
    for _ in range(batch):
        scale = 0.8 + 0.2 * torch.rand((), generator=generator).item()
        ch, cw = max(1, round(h * scale)), max(1, round(w * scale))
        top = int(torch.randint(0, h - ch + 1, (), generator=generator))
        left = int(torch.randint(0, w - cw + 1, (), generator=generator))
        view = F.interpolate(x[:, :, top:top + ch, left:left + cw], size=(h, w),
                             mode="bilinear", align_corners=False)
        if torch.rand((), generator=generator).item() < 0.5:
            view = view.flip(-1)
        views.append(view)
    return torch.cat(views)


def _view_major(per_item: list[torch.Tensor]) -> torch.Tensor:
    """[item b's V rows] → rows v·B + b, the layout the adapters' hooks expect."""
    return torch.stack(per_item, dim=1).flatten(0, 1)


def train_lora(model: DragModel, x: torch.Tensor, context: Conditioning, config: LoraConfig,
               seed: int, on_step: Callable[[int], None] | None = None) -> list[Weights]:
    """Fit one LoRA per image of x ∈ [-1, 1] (B, 3, H, W), with its prompt's conditioning
    `context`, to the model's own target (ε or v, `dragnext.prediction`). Each item draws
    its views, noise and timesteps from its own
    generator seeded with `seed`, so its adapter does not depend on its batch-mates.

    Returns the adapters' weights (CPU fp32); the UNet is left as it was."""
    count, views = x.shape[0], config.batch_size
    generators = [torch.Generator().manual_seed(seed) for _ in range(count)]
    num_train = model.scheduler.config.num_train_timesteps
    adapters = Adapters.initial(model.unet, config.rank, seed, count)
    optimizer = torch.optim.AdamW(adapters.parameters(), lr=config.lr)
    with adapters.applied(model.unet):
        for step in range(config.steps):
            z_0 = model.encode(_view_major([augment(x[b:b + 1], views, g) for b, g in enumerate(generators)]))
            shape = (views, *z_0.shape[1:])
            noise = _view_major([torch.randn(shape, generator=g) for g in generators]).to(model.device)
            t = _view_major([torch.randint(0, num_train, (views,), generator=g) for g in generators])
            t = t.to(model.device)
            a = model.alpha(t).float().view(-1, 1, 1, 1)
            z_t = a.sqrt() * z_0 + (1 - a).sqrt() * noise
            target = training_target(z_0, noise, a, model.architecture.prediction_type)
            error = (model.unet_output(z_t, t, context) - target).square()
            loss = error.view(views, count, -1).mean(dim=(0, 2)).sum()  # Σ_b of item b's MSE
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if on_step:
                on_step(step + 1)
    return adapters.unstack()
