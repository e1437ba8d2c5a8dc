"""A style LoRA (a community finetune's look) fused into the model's weights before any edit.

Read with diffusers' own LoRA loader, which understands the diffusers/peft and the kohya
(`lora_unet_…`, `lora_te_…`) formats, for the UNet and the text encoder(s); then fused
(W ← W + s · B A) and its adapter layers removed. The per-image LoRA (`dragnext.lora`)
then trains on top of the fused weights with its own hooks, so the style is applied
exactly once and stays when the per-image adapter is removed.
"""

from __future__ import annotations

from pathlib import Path

from diffusers.loaders import StableDiffusionLoraLoaderMixin, StableDiffusionXLLoraLoaderMixin
from safetensors import safe_open
from torch import nn

ADAPTER = "style"


class StyleLoraError(ValueError):
    """A style LoRA that cannot be applied to this model."""


class _SD(StableDiffusionLoraLoaderMixin):
    """The components diffusers' loader reads and writes, without a pipeline (none is
    offloaded: `hf_device_map` None)."""

    hf_device_map = None

    def __init__(self, unet: nn.Module, text_encoders: list[nn.Module]):
        self.unet, self.text_encoder = unet, text_encoders[0]

    @property
    def components(self) -> dict:
        return {name: getattr(self, name) for name in self._lora_loadable_modules}


class _SDXL(StableDiffusionXLLoraLoaderMixin, _SD):
    def __init__(self, unet: nn.Module, text_encoders: list[nn.Module]):
        super().__init__(unet, text_encoders)
        self.text_encoder_2 = text_encoders[1]


def lora_file(path: str | Path) -> Path:
    """The .safetensors file of `path`: itself, or the one a folder holds (diffusers'
    `pytorch_lora_weights.safetensors` first)."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    named = path / "pytorch_lora_weights.safetensors"
    found = [named] if named.is_file() else sorted(path.glob("*.safetensors"))
    if len(found) != 1:
        raise StyleLoraError(f"--lora {path}: a folder must hold one .safetensors file "
                             f"(found {len(found)})")
    return found[0]


def check_style_lora(path: str | Path) -> None:
    """Refuses, from the file's header alone, a `--lora` that is not a safetensors file of
    LoRA weights, before a run spends anything on it."""
    file = lora_file(path)
    try:
        with safe_open(str(file), framework="pt") as weights:
            keys = list(weights.keys())
    except Exception as error:  # safetensors raises its own error types for a bad header
        raise StyleLoraError(f"--lora {path}: not a safetensors file ({type(error).__name__})") from None
    if not any("lora" in key for key in keys):
        raise StyleLoraError(f"--lora {path}: holds no LoRA weights (no tensor name has 'lora'; "
                             f"first: {', '.join(keys[:2]) or 'none'})")


def fuse_style_lora(path: str | Path, scale: float, unet: nn.Module, text_encoders: list[nn.Module]) -> None:
    """Fuse the LoRA at `path` (a .safetensors file, or a folder holding one) into `unet`
    and `text_encoders` at weight `scale`. Its header was checked by `check_style_lora`
    (`dragnext.model.check_model_present`) before any weights were loaded."""
    target = (_SDXL if len(text_encoders) == 2 else _SD)(unet, text_encoders)
    file = lora_file(path)
    try:
        target.load_lora_weights(str(file.parent), weight_name=file.name, adapter_name=ADAPTER)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        first_line = str(error).splitlines()[0] if str(error) else ""
        raise StyleLoraError(f"--lora {path}: cannot be applied to this model "
                             f"({type(error).__name__}: {first_line})") from None
    loaded = [n for n, m in target.components.items() if ADAPTER in getattr(m, "peft_config", {})]
    if not loaded:
        raise StyleLoraError(f"--lora {path}: none of its weights name a layer of this model")
    target.fuse_lora(components=loaded, lora_scale=scale, adapter_names=[ADAPTER])
    target.unload_lora_weights()
