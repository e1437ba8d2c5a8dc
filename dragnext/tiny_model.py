"""Random-weight SD-architecture models, saved with `save_pretrained` so they load back
through `load_model` like any hub model.

- `tiny` (tests and deployment smoke checks): SD1.5's layout (4 down/up blocks,
  cross-attention in the first three down and last three up blocks, a KL VAE, a CLIP text
  encoder, a byte-level CLIP tokenizer, a DDIM scheduler with SD1.5's betas) at a few
  hundred thousand parameters.
- `sd15` (speed): SD1.5's exact configs, an 860 M-parameter UNet, the KL VAE and CLIP
  ViT-L/14's text encoder, with random weights. Speed depends only on the architecture, so
  it times exactly like the real model, which cannot be fetched everywhere.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

TEXT_DIM = 32
ARCHS = ("tiny", "sd15")
SD15_VOCAB = 49408  # CLIP's; <|startoftext|> and <|endoftext|> are its last two ids


def tiny_tokenizer(vocab_size: int | None = None) -> CLIPTokenizer:
    """A CLIP tokenizer over the 256 byte symbols (no merges): every text is encodable.
    With `vocab_size`, unused tokens pad the vocabulary so the special tokens take CLIP's
    last two ids, as in SD1.5's tokenizer.

    Built from a vocab dict, not from files (transformers 5 ignores `vocab_file=`).
    """
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols]
    tokens += [f"<|unused{i}|>" for i in range((vocab_size or 0) - len(tokens) - 2)]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[],
                         model_max_length=77)


def _scheduler() -> DDIMScheduler:
    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         clip_sample=False, set_alpha_to_one=False, steps_offset=1)


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
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                scheduler=_scheduler())


def sd15_components(seed: int = 0) -> dict:
    """SD1.5's configs (`runwayml/stable-diffusion-v1-5` unet/vae/text_encoder), random weights."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2, down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=768,
        attention_head_dim=8, norm_num_groups=32, norm_eps=1e-5, act_fn="silu", downsample_padding=1,
        flip_sin_to_cos=True, freq_shift=0, mid_block_scale_factor=1)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4, norm_num_groups=32, act_fn="silu", sample_size=512, scaling_factor=0.18215)
    tokenizer = tiny_tokenizer(SD15_VOCAB)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=SD15_VOCAB, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=_scheduler())


@torch.no_grad()
def unit_variance_scale(vae: AutoencoderKL) -> float:
    """1 / std of the latents of random images: how SD1.5 chose its 0.18215, so that the
    UNet sees unit-variance latents (tiny ones make a random UNet's ε jump with z)."""
    images = torch.rand(8, 3, 32, 32) * 2 - 1
    return round(1.0 / vae.encode(images).latent_dist.mean.std().item(), 4)


def save_tiny_model(directory: str | Path, seed: int = 0, arch: str = "tiny") -> Path:
    if arch not in ARCHS:
        raise ValueError(f"arch {arch!r} is not one of {', '.join(ARCHS)}")
    directory = Path(directory)
    components = (tiny_components if arch == "tiny" else sd15_components)(seed)
    pipeline = StableDiffusionPipeline(**components, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    pipeline.save_pretrained(directory, safe_serialization=True)
    return directory
