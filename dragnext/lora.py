"""Per-image LoRA (SPEC §3 step 2): B adapters trained in one pass over a batch of items,
one per item (`dragnext.adapters`), and applied per item in the stages after it.

Training reads latents, not pixels: each image's `lora.views` augmented views (random
crops of 80–100% of each side resized back, each flipped with p = ½) are VAE-encoded once,
and each of the `lora.steps` steps draws `lora.batch_size` of them. Everything a step draws
(which views, the timesteps, the noise) comes from the item's own generator seeded with
`seed`, so its adapter does not depend on its batch-mates; it is drawn on the host
`DRAW_STEPS` steps at a time and copied to the device before those steps, so no step
reads from the device, and AdamW is fused. Views are drawn with replacement. The loss is a
sum of per-item terms and AdamW is elementwise, so each adapter trains exactly as it would
alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dragnext.adapters import Adapters, Weights, folded, training
from dragnext.conditioning import Conditioning
from dragnext.config import LoraConfig
from dragnext.device_traffic import upload
from dragnext.model import DragModel
from dragnext.prediction import training_target

__all__ = ["Weights", "augment", "lora_applied", "train_lora"]
DRAW_STEPS = 32  # steps drawn and copied to the device at a time


@contextmanager
def lora_applied(model: DragModel, weights: list[Weights | None] | None):
    """Run the block with item b's adapter folded in on its samples; no-op for None."""
    if not weights or any(w is None for w in weights):
        if weights and any(w is not None for w in weights):
            raise ValueError("LoRA weights for some items of a batch and not others")
        yield
        return
    with folded(model.unet, Adapters.stack(weights, model.device)):
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


@dataclass
class Draws:
    """What `steps` steps of a batch read, item-major rows (b·V + v), on the device."""
    rows: torch.Tensor  # (steps, B·V): rows of the view pool
    t: torch.Tensor  # (steps, B·V) training timesteps
    noise: torch.Tensor  # (steps, B·V, C, h, w)


def _draw(generators: list[torch.Generator], steps: int, config: LoraConfig, latent: torch.Size,
          num_train: int, device: torch.device) -> Draws:
    views, pool = config.batch_size, config.views
    rows, t, noise = [], [], []
    for b, g in enumerate(generators):
        rows.append(b * pool + torch.randint(0, pool, (steps, views), generator=g))
        t.append(torch.randint(0, num_train, (steps, views), generator=g))
        noise.append(torch.randn((steps, views, *latent), generator=g))
    def moved(parts: list[torch.Tensor]) -> torch.Tensor:
        return upload(torch.stack(parts, dim=1).flatten(1, 2), device)

    return Draws(moved(rows), moved(t), moved(noise))


def _draws(generators: list[torch.Generator], config: LoraConfig, latent: torch.Size, num_train: int,
           device: torch.device) -> Iterator[tuple[Draws, int]]:
    """(draws, step within them) for every step, `DRAW_STEPS` drawn at a time."""
    for start in range(0, config.steps, DRAW_STEPS):
        chunk = _draw(generators, min(DRAW_STEPS, config.steps - start), config, latent, num_train, device)
        yield from ((chunk, i) for i in range(chunk.t.shape[0]))


def view_pool(model: DragModel, x: torch.Tensor, views: int,
              generators: list[torch.Generator]) -> torch.Tensor:
    """z_0 of each image's `views` augmented views, (B·views, C, h, w) item-major: the
    only VAE encodes of a LoRA run."""
    return torch.cat([model.encode(augment(x[b:b + 1], views, g)) for b, g in enumerate(generators)])


def train_lora(model: DragModel, x: torch.Tensor, context: Conditioning, config: LoraConfig,
               seed: int, on_step: Callable[[int], None] | None = None) -> list[Weights]:
    """Fit one LoRA per image of x ∈ [-1, 1] (B, 3, H, W), with its prompt's conditioning
    `context`, to the model's own target (ε or v, `dragnext.prediction`).

    Returns the adapters' weights (CPU fp32); the UNet is left as it was."""
    count, views = x.shape[0], config.batch_size
    generators = [torch.Generator().manual_seed(seed) for _ in range(count)]
    pool = view_pool(model, x, config.views, generators)
    alphas = model.scheduler.alphas_cumprod.to(model.device)
    adapters = Adapters.initial(model.unet, config.rank, seed, count)
    optimizer = torch.optim.AdamW(adapters.parameters(), lr=config.lr, fused=True)
    num_train = model.scheduler.config.num_train_timesteps
    draws = _draws(generators, config, pool.shape[1:], num_train, model.device)
    with training(model.unet, adapters):
        for step, (drawn, i) in enumerate(draws, start=1):
            z_0, t, noise = pool[drawn.rows[i]], drawn.t[i], drawn.noise[i]
            a = alphas[t].view(-1, 1, 1, 1)
            z_t = a.sqrt() * z_0 + (1 - a).sqrt() * noise
            target = training_target(z_0, noise, a, model.architecture.prediction_type)
            error = (model.unet_output(z_t, t, context) - target).square()
            loss = error.view(count, views, -1).mean(dim=(1, 2)).sum()  # Σ_b of item b's MSE
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if on_step:
                on_step(step)
    return adapters.unstack()
