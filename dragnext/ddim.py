"""DDIM on a step grid counted from the clean end: z_0 is the clean latent, z_k the latent
at the k-th of `num_steps` timesteps, and z_T with T = round(num_steps · strength) is where
inversion stops and editing starts.

Moving between z_k and z_{k±1} uses ε_Θ(·, τ_k) for the higher-noise step of the pair, the
same in both directions, so inversion and denoising are each other's inverse up to the
change of ε along the path.

A predictor gets the latent, the timestep the UNet is run at, and ᾱ of the latent's own
noise level: a v-predicting model's output becomes ε at that level (`dragnext.prediction`).
In inversion the UNet runs at τ_{k+1} on z_k, whose level is ᾱ_k, as in diffusers'
`DDIMInverseScheduler`; in denoising the two are the same.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler

NoisePredictor = Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor]  # (z, timestep, ᾱ of z) -> ε


@dataclass(frozen=True)
class DDIMSchedule:
    timesteps: list[int]  # τ_k for k = 1..N (index 0 is unused: z_0 has no timestep)
    alphas: torch.Tensor  # ᾱ_k for k = 0..N, float64
    steps: torch.Tensor | None = None  # τ_k on the device the schedule was moved to (`to`)

    def to(self, device: torch.device | str) -> DDIMSchedule:
        """The schedule on `device`: ᾱ and τ uploaded once, so a step neither uploads nor waits
        (an int timestep makes diffusers build a tensor on the device at every call)."""
        steps = torch.tensor(self.timesteps, device=device)
        return DDIMSchedule(self.timesteps, self.alphas.to(device), steps)

    def timestep(self, k: int) -> torch.Tensor | int:
        """τ_k as the UNet takes it: a 0-d tensor on the device once the schedule is there."""
        return self.timesteps[k] if self.steps is None else self.steps[k]

    @classmethod
    def from_scheduler(cls, scheduler: DDIMScheduler, num_steps: int) -> DDIMSchedule:
        scheduler.set_timesteps(num_steps)
        ascending = scheduler.timesteps.flip(0).tolist()
        alphas = torch.cat([scheduler.final_alpha_cumprod.reshape(1),
                            scheduler.alphas_cumprod[ascending]]).double()
        return cls(timesteps=[-1] + ascending, alphas=alphas)

    @property
    def num_steps(self) -> int:
        return len(self.timesteps) - 1


def ddim_move(z: torch.Tensor, eps: torch.Tensor, alpha_from: torch.Tensor,
              alpha_to: torch.Tensor) -> torch.Tensor:
    """Deterministic DDIM: predict x_0 from (z, ε) at ᾱ_from, re-noise it to ᾱ_to."""
    return alpha_to.sqrt() * predict_x0(z, eps, alpha_from) + (1 - alpha_to).sqrt() * eps


def predict_x0(z: torch.Tensor, eps: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """x̂₀ = (z − √(1−ᾱ) ε) / √ᾱ."""
    return (z - (1 - alpha).sqrt() * eps) / alpha.sqrt()


def denoise_step(schedule: DDIMSchedule, z_k: torch.Tensor, eps: torch.Tensor, k: int) -> torch.Tensor:
    """z_k → z_{k−1} given ε_Θ(z_k, τ_k)."""
    a = schedule.alphas.to(z_k.device)
    return ddim_move(z_k, eps, a[k].to(z_k.dtype), a[k - 1].to(z_k.dtype))


@torch.no_grad()
def invert(schedule: DDIMSchedule, z_0: torch.Tensor, T: int, predict: NoisePredictor,
           on_step: Callable[[int], None] | None = None) -> list[torch.Tensor]:
    """DDIM inversion z_0 → z_T; returns the whole trajectory [z_0, z_1, …, z_T]."""
    a = schedule.alphas.to(z_0.device)
    trajectory = [z_0]
    for k in range(T):
        z_k = trajectory[-1]
        eps = predict(z_k, schedule.timestep(k + 1), a[k])
        trajectory.append(ddim_move(z_k, eps, a[k].float(), a[k + 1].float()))
        if on_step:
            on_step(k + 1)
    return trajectory


@torch.no_grad()
def denoise(schedule: DDIMSchedule, z_k: torch.Tensor, k: int, predict: NoisePredictor,
            on_step: Callable[[int], None] | None = None) -> torch.Tensor:
    """Plain DDIM denoising z_k → z_0."""
    a = schedule.alphas.to(z_k.device)
    for step in range(k, 0, -1):
        z_k = denoise_step(schedule, z_k, predict(z_k, schedule.timestep(step), a[step]), step)
        if on_step:
            on_step(step)
    return z_k
