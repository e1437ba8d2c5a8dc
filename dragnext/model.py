"""A diffusion model of a supported family (`dragnext.architecture`): loading (hub id or
local folder, optionally with another VAE and a style LoRA) and the few calls the algorithm
makes on it (prompt conditioning, VAE encode/decode, a UNet forward)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from dragnext.architecture import Architecture, UnsupportedModelError, describe, read_architecture
from dragnext.conditioning import Conditioning, embed_prompt
from dragnext.config import EditConfig, build_config
from dragnext.engine import UNetEngine
from dragnext.fingerprint import model_folder
from dragnext.model_files import ModelFileError, check_tree, read_config
from dragnext.model_source import DEFAULT_MODEL, ModelSource
from dragnext.prediction import to_epsilon
from dragnext.profiling import PassCounter
from dragnext.resize import Size
from dragnext.style_lora import check_style_lora, fuse_style_lora

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_MODEL", "DragModel", "ModelNotFoundError", "ModelSource", "UnsupportedModelError",
           "load_model", "model_preset", "source_architecture"]


class ModelNotFoundError(RuntimeError):
    """The model could not be found locally and could not be downloaded."""


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_unet_dtype(device: torch.device) -> torch.dtype:
    """Half precision on CUDA (bf16 where supported); latents and optimiser stay fp32."""
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@dataclass
class DragModel:
    source: ModelSource
    architecture: Architecture
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoders: list[torch.nn.Module]
    tokenizers: list[CLIPTokenizer]
    scheduler: DDIMScheduler
    device: torch.device
    passes: PassCounter = field(default_factory=PassCounter)
    engine: UNetEngine = field(default_factory=UNetEngine)  # its mode is the batch's `runtime.compile`
    _alphas: torch.Tensor | None = field(default=None, init=False, repr=False)

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def size_multiple(self) -> int:
        """Image sides must divide by this so every UNet level has whole pixels."""
        return self.architecture.size_multiple

    def embed_prompt(self, prompt: str, size: Size | None = None) -> Conditioning:
        """The prompt's conditioning for an image of `size` (h, w; default: the native size)."""
        native = self.architecture.native_size
        size = size or (native, native)
        return embed_prompt(prompt, self.text_encoders, self.tokenizers, size, self.device)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Image in [-1, 1] to the scaled latent z_0 (the posterior mean: deterministic)."""
        posterior = self.vae.encode(x.to(self.device, self.vae.dtype)).latent_dist
        return posterior.mean.float() * self.architecture.vae_scaling

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        x = self.vae.decode((z / self.architecture.vae_scaling).to(self.vae.dtype)).sample
        return x.float().clamp(-1, 1)

    def alpha(self, timestep: int | torch.Tensor) -> torch.Tensor:
        """ᾱ at a training timestep (or one per sample)."""
        if self._alphas is None or self._alphas.device != self.device:  # moved once, then indexed there
            self._alphas = self.scheduler.alphas_cumprod.to(self.device)
        return self._alphas[timestep]

    def unet_output(self, z: torch.Tensor, timestep: int | torch.Tensor,
                    cond: Conditioning) -> torch.Tensor:
        """The UNet's own prediction (ε or v) in fp32, whatever precision it runs at;
        differentiable in z (and in LoRA weights while training). Every UNet pass goes
        through here and is counted.

        `cond` holds one row per item of a batch of B; z holds c samples per item,
        item-major (each item's [reference, edited] pair, or its LoRA views), so sample n is
        item n // c."""
        out = self.engine(self.unet, z.to(self.dtype), timestep, **cond.unet_kwargs(z.shape[0], self.dtype))
        self.passes.count(out)
        return out.float()

    def predict_noise(self, z: torch.Tensor, timestep: int | torch.Tensor, cond: Conditioning,
                      alpha: torch.Tensor | None = None) -> torch.Tensor:
        """ε_Θ(z, t): the UNet's prediction converted to noise (`dragnext.prediction`) at z's
        noise level ᾱ = `alpha` (default: the timestep's)."""
        output = self.unet_output(z, timestep, cond)
        if self.architecture.prediction_type == "epsilon":
            return output
        alpha = self.alpha(timestep) if alpha is None else alpha
        return to_epsilon(output, z, alpha, self.architecture.prediction_type)


PRESET_FILE = "dragnext.json"


def model_preset(spec: str | Path) -> dict:
    """Config keys a local model folder recommends for itself (its `dragnext.json`), e.g. a
    working size other than SD1.5's 512. They sit between the defaults and the user's keys."""
    path = Path(spec).expanduser() / PRESET_FILE
    return read_config(path, f"--model {spec}: {PRESET_FILE}") if path.exists() else {}


def _not_found(spec: str, cause: Exception) -> ModelNotFoundError:
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}
    return ModelNotFoundError(
        f"model '{spec}' could not be loaded ({type(cause).__name__}: "
        f"{str(cause).splitlines()[0] if str(cause) else 'no detail'}).\n"
        "Provide it in one of these ways:\n"
        "  - a local folder in diffusers format (unet/, vae/, text_encoder/, tokenizer/, "
        "scheduler/): --model /path/to/model;\n"
        "  - a Hugging Face cache that already holds it: set HF_HOME to that cache;\n"
        "  - network access to the hub" + (" (HF_HUB_OFFLINE is set, so the hub is not asked)"
                                          if offline else "") + ".\n"
        "For tests and smoke checks, 'dragnext tiny-model DIR' writes a small random model.")


def check_model_present(source: ModelSource | str) -> None:
    """Raises `ModelNotFoundError` when `load_model(source)` could not find the model: a path
    that is no folder, (offline) a hub id the local cache does not hold, or a VAE or style
    LoRA path with nothing there. Loads nothing."""
    source = ModelSource.of(source)
    for extra, name in ((source.vae, "--vae"), (source.lora, "--lora")):
        if extra and not Path(extra).expanduser().exists() and model_folder(extra) is None:
            raise ModelNotFoundError(f"{name} {extra}: no such file or folder")
    if source.lora:
        check_style_lora(source.lora)
    spec = source.model
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}
    folder = model_folder(spec)
    if folder is None and (offline or spec.startswith((".", "/", "~"))):
        raise _not_found(spec, FileNotFoundError("not a local folder, and not in the Hugging Face cache"))
    for tree, name in ((folder, "--model"), (model_folder(source.vae) if source.vae else None, "--vae")):
        if tree is not None:
            check_tree(tree, name)


def checked_config(source: ModelSource, overrides: dict | None = None) -> EditConfig:
    """The config an edit on `source` runs with (defaults, the model's preset, `overrides`),
    checked against the model's shape, after checking the model is there: a wrong model or
    key costs one line before any weight is loaded."""
    config = build_config(overrides=overrides, preset=model_preset(source.model))
    check_model_present(source)
    if (architecture := source_architecture(source)) is not None:
        config.check_model(architecture)
    return config


def source_architecture(source: ModelSource | str) -> Architecture | None:
    """The architecture from the config files alone (nothing loaded), or None when the model
    is not on this machine (a hub id not in the cache: `load_model` reports that)."""
    source = ModelSource.of(source)
    folder = model_folder(source.model)
    return None if folder is None else read_architecture(folder, source.vae)


def _text_encoders(source: str, count: int) -> tuple[list, list]:
    """SD1.x/SD2.x: one CLIP text encoder; SDXL: CLIP-L and the projected OpenCLIP-G."""
    encoders = [CLIPTextModel.from_pretrained(source, subfolder="text_encoder")]
    if count == 2:
        encoders.append(CLIPTextModelWithProjection.from_pretrained(source, subfolder="text_encoder_2"))
    names = ["tokenizer", "tokenizer_2"][:count]
    return encoders, [CLIPTokenizer.from_pretrained(source, subfolder=name) for name in names]


def _vae(source: str, vae: str | None) -> AutoencoderKL:
    if vae is None:
        return AutoencoderKL.from_pretrained(source, subfolder="vae")
    local = Path(vae).expanduser()
    nested = local.is_dir() and (local / "vae").is_dir()
    try:
        return AutoencoderKL.from_pretrained(str(local) if local.is_dir() else vae,
                                             subfolder="vae" if nested else None)
    except (OSError, ValueError) as error:
        raise UnsupportedModelError(f"--vae {vae}: cannot be loaded as an AutoencoderKL "
                                    f"({type(error).__name__}: {str(error).splitlines()[0]})") from None


def load_model(spec: ModelSource | str | Path = DEFAULT_MODEL, device: torch.device | str | None = None,
               dtype: torch.dtype | None = None) -> DragModel:
    """Load a model of a supported family from a hub id or a local folder, with the source's
    VAE in place of its own and its style LoRA fused in (`dragnext.style_lora`).

    Only what an edit uses is read: UNet, VAE, text encoder(s), tokenizer(s) and the
    scheduler's config. The UNet runs at `dtype` (half precision on CUDA by default); VAE
    and text encoders stay fp32, which costs little and keeps colours and embeddings exact.
    """
    source = ModelSource.of(str(spec) if isinstance(spec, Path) else spec)
    spec = source.model
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_unet_dtype(device)
    local = Path(spec).expanduser()
    check_model_present(source)
    source_path = str(local) if local.is_dir() else spec
    known = source_architecture(source)  # an unsupported folder fails here, before any weights
    try:
        unet = UNet2DConditionModel.from_pretrained(source_path, subfolder="unet", torch_dtype=dtype)
        encoders = known.text_encoders if known else 2 if unet.config.get("addition_embed_type") else 1
        text_encoders, tokenizers = _text_encoders(source_path, encoders)
        vae = _vae(source_path, source.vae)
        scheduler = DDIMScheduler.from_pretrained(source_path, subfolder="scheduler")
    except ModelFileError:
        raise
    except (OSError, ValueError) as error:
        raise _not_found(spec, error) from None
    return assemble(source, dict(unet=unet, vae=vae, scheduler=scheduler, text_encoders=text_encoders,
                                 tokenizers=tokenizers), device, dtype)


def assemble(source: ModelSource, parts: dict, device: torch.device | str, dtype: torch.dtype) -> DragModel:
    """A `DragModel` from components in memory (`load_model`'s, or `tiny_model.components`
    built on the device): describes them, fuses the source's style LoRA, moves them to
    `device` (the UNet at `dtype`) and freezes them."""
    device = torch.device(device)
    unet, vae, text_encoders = parts["unet"], parts["vae"], parts["text_encoders"]
    if unet.dtype != dtype:
        unet.to(dtype=dtype)
    scheduler = parts["scheduler"]
    if not isinstance(scheduler, DDIMScheduler):  # e.g. SDXL's Euler config: the method steps DDIM
        scheduler = DDIMScheduler.from_config(scheduler.config)
    architecture = describe(unet.config, vae.config, scheduler.config, len(text_encoders))
    if source.lora:
        fuse_style_lora(source.lora, source.lora_scale, unet, text_encoders)
    for module in (unet, vae, *text_encoders):
        module.to(device)
        module.requires_grad_(False)
        module.eval()
    log.info("loaded model %s on %s (%s, %s, UNet %s)", source, device, architecture.family,
             architecture.prediction_type, str(dtype).removeprefix("torch."))
    return DragModel(source, architecture, unet, vae, text_encoders, parts["tokenizers"], scheduler, device)
