"""What a UNet predicts, and how to turn it into the noise ε that every formula of the method
uses (DDIM inversion and denoising, PBSI's x̂₀ and λ terms, the peers).

With z_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε, a model predicts either

    ε                                  (prediction_type "epsilon": SD1.x, SD2.x-base, SDXL)
    v = √ᾱ_t ε − √(1−ᾱ_t) x₀           (prediction_type "v_prediction": SD2.x at 768 px)

and from v:  ε = √ᾱ_t v + √(1−ᾱ_t) z_t,   x̂₀ = √ᾱ_t z_t − √(1−ᾱ_t) v.
"""

from __future__ import annotations

import torch


def _broadcast(alpha: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """ᾱ as a scalar or one per sample, shaped to broadcast over `like`, in its dtype."""
    alpha = alpha.to(like.device, like.dtype)
    return alpha.view(-1, *[1] * (like.dim() - 1)) if alpha.dim() else alpha


def to_epsilon(output: torch.Tensor, z_t: torch.Tensor, alpha: torch.Tensor,
               prediction_type: str) -> torch.Tensor:
    """ε from the UNet's `output` at z_t with ᾱ_t = `alpha` (a scalar or one per sample)."""
    if prediction_type == "epsilon":
        return output
    a = _broadcast(alpha, z_t)
    return a.sqrt() * output + (1 - a).sqrt() * z_t


def training_target(x_0: torch.Tensor, noise: torch.Tensor, alpha: torch.Tensor,
                    prediction_type: str) -> torch.Tensor:
    """What the UNet should output for z_t = √ᾱ x₀ + √(1−ᾱ) noise: the noise, or v."""
    if prediction_type == "epsilon":
        return noise
    a = _broadcast(alpha, x_0)
    return a.sqrt() * noise - (1 - a).sqrt() * x_0
