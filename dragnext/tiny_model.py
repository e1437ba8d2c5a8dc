"""A tiny random-weight SD-architecture model for tests and deployment smoke checks.

Same layout as SD1.5 (4 down/up blocks, cross-attention in the first three down and last
three up blocks, a KL VAE, a CLIP text encoder, a byte-level CLIP BPE tokenizer, a DDIM
scheduler with SD1.5's betas), saved with `save_pretrained` so it loads back through
`load_model` like any hub model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

TEXT_DIM = 32


def tiny_tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer over the 256 byte symbols (no merges): every text is encodable.

    Built from a vocab dict, not from files (transformers 5 ignores `vocab_file=`).
    """
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[],
                         model_max_length=77)


def tiny_components(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16, block_out_channels=(32, 32, 64, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=TEXT_DIM, attention_head_dim=4, norm_num_groups=32)
    vae = AutoencoderKL(
        block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=32,
        sample_size=32)
    vae.register_to_config(scaling_factor=unit_variance_scale(vae))
    tokenizer = tiny_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_DIM, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1)
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                scheduler=scheduler)


@torch.no_grad()
def unit_variance_scale(vae: AutoencoderKL) -> float:
    """1 / std of the latents of random images: how SD1.5 chose its 0.18215, so that the
    UNet sees unit-variance latents (tiny ones make a random UNet's ε jump with z)."""
    images = torch.rand(8, 3, 32, 32) * 2 - 1
    return round(1.0 / vae.encode(images).latent_dist.mean.std().item(), 4)


def save_tiny_model(directory: str | Path, seed: int = 0) -> Path:
    directory = Path(directory)
    pipeline = StableDiffusionPipeline(**tiny_components(seed), safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    pipeline.save_pretrained(directory, safe_serialization=True)
    return directory
