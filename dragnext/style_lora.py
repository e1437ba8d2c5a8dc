"""A style LoRA (a community finetune's look) fused into the model's weights before any edit.

Read with diffusers' own LoRA loader, which understands the diffusers/peft and the kohya
(`lora_unet_…`, `lora_te_…`) formats, for the UNet and the text encoder(s); then fused
(W ← W + s · B A) and its adapter layers removed. The per-image LoRA (`dragnext.lora`)
then trains on top of the fused weights with its own hooks, so the style is applied
exactly once and stays when the per-image adapter is removed.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from diffusers.loaders import StableDiffusionLoraLoaderMixin, StableDiffusionXLLoraLoaderMixin
from safetensors import safe_open
from torch import nn

from dragnext.model_files import ModelFileError, check_regular

ADAPTER = "style"
# A LoRA factor's name (peft's lora_A/lora_B, kohya's lora_down/lora_up); DoRA's magnitude
# vectors and biases are 1-d and not factors.
_FACTOR = re.compile(r"lora[._](A|B|up|down)[._](default[._])?weight$")


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
    if not path.is_dir():
        file = path
    else:
        named = path / "pytorch_lora_weights.safetensors"
        found = [named] if named.exists() else sorted(path.glob("*.safetensors"))
        if len(found) != 1:
            raise StyleLoraError(f"--lora {path}: a folder must hold one .safetensors file "
                                 f"(found {len(found)})")
        file = found[0]
    try:
        check_regular(file, "--lora")  # a FIFO would block safetensors' open for ever
    except ModelFileError as error:
        raise StyleLoraError(str(error)) from None
    return file


def check_style_lora(path: str | Path) -> None:
    """Refuses a `--lora` that is not a safetensors file of LoRA weights, or whose weights
    could not be fused (a factor that is not a matrix or conv kernel, a value that is not
    finite), before a run spends anything on it."""
    file = lora_file(path)
    try:
        with safe_open(str(file), framework="pt") as weights:
            keys = list(weights.keys())
            if not any("lora" in key for key in keys):
                raise StyleLoraError(f"--lora {path}: holds no LoRA weights (no tensor name has 'lora'; "
                                     f"first: {', '.join(keys[:2]) or 'none'})")
            for key in keys:
                _check_tensor(path, key, weights.get_tensor(key))
    except StyleLoraError:
        raise
    except Exception as error:  # safetensors raises its own error types for a bad header
        raise StyleLoraError(f"--lora {path}: not a safetensors file ({type(error).__name__})") from None


def _check_tensor(path: str | Path, key: str, tensor: torch.Tensor) -> None:
    """A factor (lora_A/lora_B, lora_down/lora_up) is a matrix or a conv kernel; an alpha a
    scalar; every value finite (a NaN fused into W would fail every item, far from here)."""
    if key.endswith(".alpha"):
        if tensor.numel() != 1:
            raise StyleLoraError(f"--lora {path}: {key} holds {tensor.numel()} values; an alpha is one")
    elif _FACTOR.search(key) and tensor.dim() not in (2, 4):
        raise StyleLoraError(f"--lora {path}: {key} is a {tensor.dim()}-d tensor; a LoRA factor is a "
                             "matrix (or a 4-d conv kernel)")
    if tensor.is_floating_point() and not torch.isfinite(tensor).all():
        raise StyleLoraError(f"--lora {path}: {key} holds values that are not finite (NaN or inf)")


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
