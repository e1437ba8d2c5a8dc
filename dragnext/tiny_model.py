"""Random-weight models of each supported family, written as diffusers folders so they load
back through `load_model` like any hub model.

- tiny (tests and deployment smoke checks): each family's layout (its blocks, attention
  placement, linear projections, conditioning, prediction type, scheduler) at a few
  hundred thousand parameters.
- `full_size` (speed): the family's exact configs (`FULL_SIZE`: SD1.5's 860 M-parameter
  UNet, SD2.1's, SDXL's 2.6 B) with random weights. Speed depends only on the
  architecture, so they time exactly like the real models, which cannot be fetched
  everywhere.

Components are saved one by one with a `model_index.json` beside them, as a pipeline's
`save_pretrained` would write, without importing the pipelines (and their image processors).
"""

from __future__ import annotations

import json
from pathlib import Path

import diffusers
import torch
import transformers
from diffusers import AutoencoderKL, DDIMScheduler, EulerDiscreteScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

ARCHS = ("sd15", "sd21", "sd21-v", "sdxl")
CLIP_VOCAB = 49408  # CLIP's; <|startoftext|> and <|endoftext|> are its last two ids
TEXT_DIM = 32  # the tiny models' text width

_SD_BLOCKS = dict(down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                  up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
_XL_BLOCKS = dict(down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                  up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"))
_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
              steps_offset=1)

# The families' real configs (stable-diffusion-v1-5, stable-diffusion-2-1[-base],
# stable-diffusion-xl-base-1.0): unet, vae, text encoder(s), scheduler.
_CLIP_L = dict(vocab_size=CLIP_VOCAB, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
               num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
               projection_dim=768)
_OPEN_CLIP_H = dict(vocab_size=CLIP_VOCAB, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                    num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu", projection_dim=512)
_OPEN_CLIP_G = dict(vocab_size=CLIP_VOCAB, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                    num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu",
                    projection_dim=1280)
_KL_VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
               down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
               latent_channels=4, norm_num_groups=32)
_SD2_UNET = dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, **_SD_BLOCKS,
                 cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True)
FULL_SIZE = {
    "sd15": dict(
        unet=dict(sample_size=64, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, **_SD_BLOCKS,
                  cross_attention_dim=768, attention_head_dim=8),
        vae=dict(**_KL_VAE, sample_size=512, scaling_factor=0.18215),
        text=[_CLIP_L], scheduler=dict(prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False)),
    "sd21": dict(
        unet=dict(sample_size=64, **_SD2_UNET),
        vae=dict(**_KL_VAE, sample_size=512, scaling_factor=0.18215),
        text=[_OPEN_CLIP_H], scheduler=dict(prediction_type="epsilon", clip_sample=False,
                                            set_alpha_to_one=False)),
    "sd21-v": dict(
        unet=dict(sample_size=96, upcast_attention=True, **_SD2_UNET),
        vae=dict(**_KL_VAE, sample_size=768, scaling_factor=0.18215),
        text=[_OPEN_CLIP_H], scheduler=dict(prediction_type="v_prediction", clip_sample=False,
                                            set_alpha_to_one=False)),
    "sdxl": dict(
        unet=dict(sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2, **_XL_BLOCKS,
                  cross_attention_dim=2048, attention_head_dim=(5, 10, 20), use_linear_projection=True,
                  transformer_layers_per_block=(1, 2, 10), addition_embed_type="text_time",
                  addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816),
        vae=dict(**_KL_VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=True),
        text=[_CLIP_L, _OPEN_CLIP_G], scheduler=dict(prediction_type="epsilon", euler=True)),
}


def _tiny(arch: str) -> dict:
    """The family's layout at a few hundred thousand parameters (2× VAE, 32-wide text)."""
    text = dict(hidden_size=TEXT_DIM, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=77, projection_dim=TEXT_DIM)
    vae = dict(block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
               up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=32,
               sample_size=32)
    full = FULL_SIZE[arch]
    if arch == "sdxl":
        unet = dict(sample_size=32, block_out_channels=(32, 64, 64), layers_per_block=1, **_XL_BLOCKS,
                    cross_attention_dim=2 * TEXT_DIM, attention_head_dim=(2, 4, 4),
                    use_linear_projection=True,
                    transformer_layers_per_block=(1, 1, 2), addition_embed_type="text_time",
                    addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + TEXT_DIM)
    else:
        unet = dict(sample_size={"sd15": 16, "sd21": 16, "sd21-v": 24}[arch],
                    block_out_channels=(32, 32, 64, 64),
                    layers_per_block=1, **_SD_BLOCKS, cross_attention_dim=TEXT_DIM,
                    attention_head_dim=4 if arch == "sd15" else (2, 4, 4, 4),
                    use_linear_projection=arch != "sd15")
    hidden_act = [t["hidden_act"] for t in full["text"]]
    return dict(unet=unet, vae=vae, text=[dict(text, hidden_act=a) for a in hidden_act],
                scheduler=full["scheduler"])


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


def _scheduler(config: dict) -> DDIMScheduler | EulerDiscreteScheduler:
    config = dict(config)
    if config.pop("euler", False):  # SDXL ships an Euler config; `load_model` reads it as DDIM
        return EulerDiscreteScheduler(**_BETAS, timestep_spacing="leading", **config)
    return DDIMScheduler(**_BETAS, **config)


def _text_encoder(config: dict, tokenizer: CLIPTokenizer, projected: bool):
    config = CLIPTextConfig(**config, bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)
    return (CLIPTextModelWithProjection if projected else CLIPTextModel)(config)


def components(arch: str = "sd15", full_size: bool = False, seed: int = 0) -> dict:
    """A family's components, random weights from `seed`; names as in a diffusers folder."""
    if arch not in ARCHS:
        raise ValueError(f"arch {arch!r} is not one of {', '.join(ARCHS)}")
    torch.manual_seed(seed)
    spec = dict(FULL_SIZE[arch]) if full_size else _tiny(arch)
    unet = UNet2DConditionModel(**spec["unet"])
    vae = AutoencoderKL(**spec["vae"])
    if not full_size:
        vae.register_to_config(scaling_factor=unit_variance_scale(vae))
    tokenizer = tiny_tokenizer(spec["text"][0].get("vocab_size"))
    spec["text"] = [{**t, "vocab_size": len(tokenizer)} for t in spec["text"]]
    parts = dict(unet=unet, vae=vae, scheduler=_scheduler(spec["scheduler"]))
    for i, text in enumerate(spec["text"]):
        suffix = f"_{i + 1}" if i else ""
        parts["text_encoder" + suffix] = _text_encoder(text, tokenizer, projected=i == 1)
        parts["tokenizer" + suffix] = tokenizer
    return parts


@torch.no_grad()
def unit_variance_scale(vae: AutoencoderKL) -> float:
    """1 / std of the latents of random images: how SD1.5 chose its 0.18215, so that the
    UNet sees unit-variance latents (tiny ones make a random UNet's ε jump with z)."""
    images = torch.rand(8, 3, 32, 32) * 2 - 1
    return round(1.0 / vae.encode(images).latent_dist.mean.std().item(), 4)


def _library(part) -> str:
    return "transformers" if isinstance(part, (transformers.PreTrainedModel, CLIPTokenizer)) else "diffusers"


def save_components(parts: dict, directory: str | Path) -> Path:
    """Each component in its subfolder and the `model_index.json` naming them."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    pipeline = "StableDiffusionXLPipeline" if "text_encoder_2" in parts else "StableDiffusionPipeline"
    index = {"_class_name": pipeline,
             "_diffusers_version": diffusers.__version__}
    for name, part in parts.items():
        if hasattr(part, "save_pretrained"):
            part.save_pretrained(directory / name, **({} if isinstance(part, CLIPTokenizer) else
                                                      {"safe_serialization": True}))
        else:  # a scheduler
            part.save_config(directory / name)
        index[name] = [_library(part), type(part).__name__]
    (directory / "model_index.json").write_text(json.dumps(index, indent=2))
    return directory


def in_memory_model(arch: str, device: torch.device | str, dtype: torch.dtype, full_size: bool = True,
                    seed: int = 0):
    """A family's random model built on `device` and used from memory: no 14 GB folder to
    write and read back for a profile of SDXL's size."""
    from dragnext.model import assemble
    from dragnext.model_source import ModelSource

    with torch.device(device):
        parts = components(arch, full_size, seed)
    count = 2 if "text_encoder_2" in parts else 1
    names = [("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")][:count]
    grouped = dict(unet=parts["unet"], vae=parts["vae"], scheduler=parts["scheduler"],
                   text_encoders=[parts[e] for e, _ in names], tokenizers=[parts[t] for _, t in names])
    size = "full-size" if full_size else "tiny"
    return assemble(ModelSource(model=f"random {size} {arch}"), grouped, device, dtype)


def save_tiny_model(directory: str | Path, seed: int = 0, arch: str = "sd15",
                    full_size: bool = False) -> Path:
    return save_components(components(arch, full_size, seed), directory)
