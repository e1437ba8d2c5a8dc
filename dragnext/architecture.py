"""What the method needs to know about a model family, read from the model's configs (never
from its name): SD1.x, SD2.x (ε or v-prediction) and SDXL.

    conditioning   one text encoder's last hidden state (SD1.x, SD2.x), or SDXL's two
                   encoders' penultimate hidden states concatenated, with the second's
                   pooled embedding and the added time ids (h, w, top, left, h, w);
    prediction     ε or v (the scheduler's `prediction_type`); see `dragnext.prediction`;
    VAE            z = s · E(x), s the VAE's `scaling_factor` (0.18215; SDXL 0.13025);
    native size    the UNet's `sample_size` × the VAE's downsampling factor (512, 768, 1024).

The paper's two choices about UNet layers, written as rules about decoder stages so they
carry over from SD1.5 (4 decoder stages, 16 self-attention layers) to any family:

    F = the output of up_blocks[−2], the last decoder stage that upsamples: its output is
        at latent resolution (SD1.5 up_blocks[2] with 640 channels; SDXL up_blocks[1],
        also 640);
    mutual self-attention covers every self-attention layer of the last two decoder
        stages, from the first of up_blocks[−2] on (SD1.5: layers 10–15 of 16, the
        paper's "from the 10th layer"; SDXL: 64–69 of 70, up_blocks[2] has none).

Layer counts follow diffusers' `UNet2DConditionModel` construction: a cross-attention
block holds `layers_per_block` (+1 in the decoder) transformers, each
`transformer_layers_per_block` deep, and the mid block one of the last depth.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dragnext.model_files import ModelFileError, SchedulerFields, UnetFields, VaeFields, fields, read_config

UNET_CLASS = "UNet2DConditionModel"
PREDICTION_TYPES = ("epsilon", "v_prediction")
TIME_IDS = 6  # SDXL's added time ids: original (h, w), crop (top, left), target (h, w)


class UnsupportedModelError(ModelFileError):
    """A model folder of a family the method does not support; says what was found."""


@dataclass(frozen=True)
class Architecture:
    family: str  # "sd1", "sd2" or "sdxl": descriptive; behaviour follows the fields below
    prediction_type: str  # "epsilon" or "v_prediction"
    vae_scaling: float
    vae_factor: int  # image px per latent px
    native_size: int  # px, the longer side the model was trained at
    size_multiple: int  # image sides divide by this so every UNet level has whole pixels
    text_encoders: int  # 1, or 2 for SDXL
    added_time_ids: bool  # SDXL: pooled text embedding and time ids as added conditioning
    up_blocks: int
    feature_block: int  # up_blocks index whose output is F
    feature_channels: int
    self_attention_layers: int  # in forward order: down, mid, up
    mutual_start_layer: int  # first self-attention layer of up_blocks[−2]

    @property
    def mutual_layers(self) -> range:
        return range(self.mutual_start_layer, self.self_attention_layers)

    def to_record(self) -> dict[str, Any]:
        return asdict(self)


def _per_block(value: Any, count: int) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value] * count


def _depth(value: Any, transformers: int) -> int:
    """Self-attention layers in a block of `transformers` transformers of depth `value`
    (an int, or one depth per transformer)."""
    return sum(value) if isinstance(value, (list, tuple)) else value * transformers


def self_attention_counts(unet: UnetFields) -> tuple[list[int], int, list[int]]:
    """Self-attention layers per down block, in the mid block, and per up block."""
    down_types, up_types = unet.down_block_types, unet.up_block_types
    layers = _per_block(unet.layers_per_block, len(down_types))
    depth = _per_block(unet.transformer_layers_per_block, len(down_types))
    reverse_depth = unet.reverse_transformer_layers_per_block or depth[::-1]
    down = [_depth(depth[i], layers[i]) if "CrossAttn" in t else 0 for i, t in enumerate(down_types)]
    mid_type = unet.mid_block_type
    mid = _depth(depth[-1], 1) if mid_type and "CrossAttn" in mid_type else 0
    up = [_depth(reverse_depth[i], layers[::-1][i] + 1) if "CrossAttn" in t else 0
          for i, t in enumerate(up_types)]
    return down, mid, up


def _unsupported(found: str) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"unsupported model: {found}. Supported: SD1.x, SD2.x (ε or v-prediction) and SDXL base "
        "folders in diffusers format (a 4-channel UNet2DConditionModel with a KL VAE).")


def _check_unet(unet: UnetFields, text_encoders: int) -> None:
    if unet.class_name != UNET_CLASS:
        raise _unsupported(f"its unet is a {unet.class_name}, not a {UNET_CLASS}")
    if unet.in_channels != 4 or unet.out_channels != 4:
        raise _unsupported(f"a UNet with {unet.in_channels} input and {unet.out_channels} "
                           "output channels (an inpainting, depth or upscaling model)")
    if unet.class_embed_type is not None:
        raise _unsupported(f"a UNet with class_embed_type={unet.class_embed_type!r} (an upscaling "
                           "or image-variation model)")
    added = unet.addition_embed_type
    if added not in (None, "text_time"):
        raise _unsupported(f"a UNet with addition_embed_type={added!r}")
    if added == "text_time" and text_encoders != 2:
        raise _unsupported(f"an SDXL-style UNet with {text_encoders} text encoder(s) (an SDXL refiner "
                           "conditions on one encoder and an aesthetic score)")
    if added is None and text_encoders != 1:
        raise _unsupported(f"{text_encoders} text encoders for a UNet without added conditioning")


def describe(unet: Mapping[str, Any], vae: Mapping[str, Any], scheduler: Mapping[str, Any],
             text_encoders: int, names: tuple[str, str, str] = ("unet config", "vae config",
                                                               "scheduler config")) -> Architecture:
    """The architecture of a model from its component configs (dicts or diffusers
    `FrozenDict`s, checked field by field, `names` naming them in errors): what
    `dragnext.model` and the stages read instead of assuming SD1.5."""
    unet = fields(UnetFields, unet, names[0])
    vae = fields(VaeFields, vae, names[1])
    scheduler = fields(SchedulerFields, scheduler, names[2])
    _check_unet(unet, text_encoders)
    if vae.class_name != "AutoencoderKL":
        raise _unsupported(f"its VAE is a {vae.class_name}, not an AutoencoderKL")
    if vae.latent_channels != unet.in_channels:
        raise _unsupported(f"a VAE with {vae.latent_channels} latent channels for a UNet that takes "
                           f"{unet.in_channels}")
    if scheduler.prediction_type not in PREDICTION_TYPES:
        raise _unsupported(f"prediction_type={scheduler.prediction_type!r} (supported: "
                           f"{', '.join(PREDICTION_TYPES)})")
    vae_factor = 2 ** (len(vae.block_out_channels) - 1)
    down, mid, up = self_attention_counts(unet)
    feature_block = len(up) - 2
    if up[-2] + up[-1] == 0:
        raise _unsupported("a UNet whose last two decoder stages have no self-attention")
    added = unet.addition_embed_type == "text_time"
    return Architecture(
        family="sdxl" if added else "sd2" if unet.use_linear_projection else "sd1",  # SD2 projects linearly
        prediction_type=scheduler.prediction_type,
        vae_scaling=vae.scaling_factor,
        vae_factor=vae_factor,
        native_size=unet.native_latent * vae_factor,
        size_multiple=vae_factor * 2 ** (len(unet.block_out_channels) - 1),
        text_encoders=text_encoders,
        added_time_ids=added,
        up_blocks=len(up),
        feature_block=feature_block,
        feature_channels=unet.block_out_channels[::-1][feature_block],
        self_attention_layers=sum(down) + mid + sum(up),
        mutual_start_layer=sum(down) + mid + sum(up[:feature_block]),
    )


def _read_json(path: Path) -> dict:
    try:
        return read_config(path)
    except FileNotFoundError:
        raise _unsupported(f"no {path.parent.name}/{path.name} in {path.parent.parent}") from None


def read_architecture(folder: str | Path, vae_folder: str | Path | None = None) -> Architecture:
    """The architecture of a diffusers model folder, from its config files alone (nothing
    is loaded). `vae_folder` is a separate AutoencoderKL folder that replaces `vae/`."""
    folder = Path(folder)
    if (folder / "transformer").is_dir() and not (folder / "unet").is_dir():
        index = (folder / "model_index.json")
        found = _read_json(index).get("_class_name", "a transformer") if index.is_file() else "a transformer"
        raise _unsupported(f"{folder} holds a {found} (a transformer denoiser, not a UNet)")
    paths = (folder / "unet" / "config.json",
             vae_config_path(Path(vae_folder)) if vae_folder else folder / "vae" / "config.json",
             folder / "scheduler" / "scheduler_config.json")
    unet, vae, scheduler = (_read_json(path) for path in paths)
    return describe(unet, vae, scheduler, text_encoders=2 if (folder / "text_encoder_2").is_dir() else 1,
                    names=tuple(str(path) for path in paths))


def vae_config_path(folder: Path) -> Path:
    """A VAE folder is either the AutoencoderKL itself or a model folder with a `vae/`."""
    if not folder.is_dir():
        raise ModelFileError(f"--vae {folder}: not a folder (give the AutoencoderKL's folder, with its "
                             "config.json, or a model folder with a vae/)")
    return folder / "vae" / "config.json" if (folder / "vae").is_dir() else folder / "config.json"
