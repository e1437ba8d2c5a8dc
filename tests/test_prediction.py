"""v-prediction through the formulas that turn a UNet output into ε or x̂₀, checked against
diffusers' own schedulers on random tensors."""

import pytest
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler

from dragnext.ddim import DDIMSchedule, denoise, invert, predict_x0
from dragnext.pbsi import x0_at
from dragnext.prediction import to_epsilon, training_target

# diffusers keeps ᾱ in fp32 and computes 1 − ᾱ there: agreement to ~1e-7, not to fp64.
BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
             set_alpha_to_one=False, steps_offset=1)


def fake_unet(z: torch.Tensor, t: int) -> torch.Tensor:
    """A deterministic stand-in for a UNet's output that depends on z and t."""
    return torch.tanh(1.5 * z.flip(-1)) + 0.01 * t ** 0.5


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_denoising_and_x0_match_diffusers_ddim_step(prediction_type):
    scheduler = DDIMScheduler(**BETAS, prediction_type=prediction_type)
    schedule = DDIMSchedule.from_scheduler(scheduler, 20)
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    predict = lambda z, t, a: to_epsilon(fake_unet(z, t), z, a, prediction_type)
    ours = denoise(schedule, z, 12, predict)
    theirs = z
    scheduler.set_timesteps(20)
    for t in scheduler.timesteps[-12:]:
        step = scheduler.step(fake_unet(theirs, int(t)), t, theirs, eta=0.0)
        k = schedule.timesteps.index(int(t))
        alpha = schedule.alphas[k]
        eps = to_epsilon(fake_unet(theirs, int(t)), theirs, alpha, prediction_type)
        assert torch.allclose(predict_x0(theirs, eps, alpha), step.pred_original_sample, atol=1e-6, rtol=1e-5)
        x0 = x0_at(schedule, theirs, eps, k, (8, 8))  # x0_at resizes to F's size: the same size here
        assert torch.allclose(x0, step.pred_original_sample, atol=1e-6, rtol=1e-5)
        theirs = step.prev_sample
    assert torch.allclose(ours, theirs, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_inversion_matches_diffusers_ddim_inverse_scheduler(prediction_type):
    inverse = DDIMInverseScheduler(**BETAS, prediction_type=prediction_type)
    schedule = DDIMSchedule.from_scheduler(DDIMScheduler(**BETAS, prediction_type=prediction_type), 20)
    z_0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ours = invert(schedule, z_0, 15, lambda z, t, a: to_epsilon(fake_unet(z, t), z, a, prediction_type))
    inverse.set_timesteps(20)
    z = z_0
    for k, t in enumerate(inverse.timesteps[:15], start=1):
        z = inverse.step(fake_unet(z, int(t)), t, z).prev_sample
        assert int(t) == schedule.timesteps[k]
        assert torch.allclose(ours[k], z, atol=1e-6, rtol=1e-5), k


def test_the_training_target_is_diffusers_velocity():
    scheduler = DDIMScheduler(**BETAS, prediction_type="v_prediction")
    x_0, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([10, 500, 990])
    alpha = scheduler.alphas_cumprod[t]
    assert torch.allclose(training_target(x_0, noise, alpha, "v_prediction"),
                          scheduler.get_velocity(x_0, noise, t), atol=1e-6)
    assert torch.equal(training_target(x_0, noise, alpha, "epsilon"), noise)
    # and the round trip: a perfect v-model's output turns back into the noise
    z_t = alpha.view(-1, 1, 1, 1).sqrt() * x_0 + (1 - alpha.view(-1, 1, 1, 1)).sqrt() * noise
    v = scheduler.get_velocity(x_0, noise, t)
    assert torch.allclose(to_epsilon(v, z_t, alpha, "v_prediction"), noise, atol=1e-5)
