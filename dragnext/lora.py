"""Per-image LoRA (SPEC §3 step 2): train a peft adapter on the UNet's attention
projections to reconstruct the item's image, return its weights, and remove it.

Training and use are separate so stored weights can be applied again without retraining
(`lora_applied`), and the base UNet is never modified: the adapter is unloaded, not fused.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from peft import LoraConfig as PeftLoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

from dragnext.config import LoraConfig
from dragnext.model import DragModel

ADAPTER = "dragnext_item"
TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def _add_adapter(model: DragModel, rank: int) -> list[torch.nn.Parameter]:
    model.unet.add_adapter(PeftLoraConfig(r=rank, lora_alpha=rank, init_lora_weights=True,
                                          target_modules=TARGETS), adapter_name=ADAPTER)
    params = [p for n, p in model.unet.named_parameters() if ".lora_" in n]
    for p in params:  # fp32 adapter on a half-precision UNet: Adam state stays exact
        p.data = p.data.float()
    return params


@contextmanager
def lora_applied(model: DragModel, weights: dict[str, torch.Tensor] | None, rank: int):
    """Run the block with the adapter `weights` on the UNet (no-op for None)."""
    if weights is None:
        yield
        return
    _add_adapter(model, rank)
    try:
        set_peft_model_state_dict(model.unet, weights, adapter_name=ADAPTER)
        model.unet.set_adapter(ADAPTER)
        yield
    finally:
        model.unet.unload_lora()


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


def train_lora(model: DragModel, x: torch.Tensor, context: torch.Tensor, config: LoraConfig,
               seed: int, on_step: Callable[[int], None] | None = None) -> dict[str, torch.Tensor]:
    """Fit a LoRA to the image x ∈ [-1, 1] (1, 3, H, W) with the prompt embedding `context`.

    Returns the adapter's weights (CPU fp32); the UNet is left without the adapter.
    """
    generator = torch.Generator().manual_seed(seed)
    num_train = model.scheduler.config.num_train_timesteps
    alphas = model.scheduler.alphas_cumprod.to(model.device)
    # peft initialises lora_A from the global RNG: seed it, so the result depends on this
    # item alone and not on what ran before in the process
    with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []):
        torch.manual_seed(seed)
        params = _add_adapter(model, config.rank)
    try:
        optimizer = torch.optim.AdamW(params, lr=config.lr)
        model.unet.train()
        for step in range(config.steps):
            z_0 = model.encode(augment(x, config.batch_size, generator))
            noise = torch.randn(z_0.shape, generator=generator).to(model.device)
            t = torch.randint(0, num_train, (config.batch_size,), generator=generator).to(model.device)
            a = alphas[t].float().view(-1, 1, 1, 1)
            z_t = a.sqrt() * z_0 + (1 - a).sqrt() * noise
            loss = F.mse_loss(model.predict_noise(z_t, t, context), noise)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if on_step:
                on_step(step + 1)
        weights = get_peft_model_state_dict(model.unet, adapter_name=ADAPTER)
        return {name: w.detach().float().cpu().clone() for name, w in weights.items()}
    finally:
        model.unet.eval()
        model.unet.unload_lora()
