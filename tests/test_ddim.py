import torch
from diffusers import DDIMScheduler

from dragnext.ddim import DDIMSchedule, denoise, invert


def sd15_scheduler() -> DDIMScheduler:
    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def test_the_schedule_counts_from_the_clean_end():
    s = DDIMSchedule.from_scheduler(sd15_scheduler(), 50)
    assert s.num_steps == 50 and s.timesteps[1] == 1 and s.timesteps[38] == 741
    assert all(b > a for a, b in zip(s.timesteps[1:], s.timesteps[2:], strict=False))
    assert all(b < a for a, b in zip(s.alphas, s.alphas[1:], strict=False))


def test_inversion_is_exact_for_constant_noise_and_first_order_otherwise():
    z_0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    constant = lambda z, t, a: torch.full_like(z, 0.3)
    s = DDIMSchedule.from_scheduler(sd15_scheduler(), 50)
    trajectory = invert(s, z_0, 38, constant)
    assert len(trajectory) == 39 and torch.equal(trajectory[0], z_0)
    assert torch.allclose(denoise(s, trajectory[-1], 38, constant), z_0, atol=1e-5)

    smooth = lambda z, t, a: torch.tanh(2 * z) + 0.1 * torch.sin(torch.tensor(t / 100))
    errors = []
    for n in (10, 40, 160):
        s = DDIMSchedule.from_scheduler(sd15_scheduler(), n)
        z_T = invert(s, z_0, n // 2, smooth)[-1]
        errors.append((denoise(s, z_T, n // 2, smooth) - z_0).abs().mean().item())
    # measured 0.023, 0.0062, 0.0016: a 4x finer grid gives ~4x less error
    assert errors[0] < 0.05 and errors[1] < errors[0] / 3 and errors[2] < errors[1] / 3


def test_inversion_then_denoising_reconstructs_the_latent_on_the_tiny_model(tiny_model):
    """The paper's schedule (50 steps, strength 0.75, T = 38) on a 16x16 latent."""
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    z_0 = tiny_model.encode(x)
    context = tiny_model.embed_prompt("a photo")
    predict = lambda z, t, a: tiny_model.predict_noise(z, t, context, a)
    s = DDIMSchedule.from_scheduler(tiny_model.scheduler, 50)
    trajectory = invert(s, z_0, 38, predict)
    z_rec = denoise(s, trajectory[-1], 38, predict)
    error = (z_rec - z_0).abs().mean().item()
    drift = (trajectory[-1] - z_0).abs().mean().item()
    print(f"inversion reconstruction: mean |error| {error:.4f}, "
          f"relative {((z_rec - z_0).norm() / z_0.norm()).item():.4f}, mean |z_T - z_0| {drift:.3f}")
    assert error < 0.15  # measured 0.093, relative 0.12 (random weights: a trained ε is smoother)
    assert error < drift / 5
