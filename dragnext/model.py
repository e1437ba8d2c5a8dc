"""An SD1.5-architecture model: loading (hub id or local folder) and the few calls the
algorithm makes on it (text embedding, VAE encode/decode, a UNet forward)."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from dragnext.fingerprint import model_folder
from dragnext.profiling import PassCounter

log = logging.getLogger(__name__)

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"


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
    spec: str
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: DDIMScheduler
    device: torch.device
    passes: PassCounter = field(default_factory=PassCounter)

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def vae_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def size_multiple(self) -> int:
        """Image sides must divide by this so every UNet level has whole pixels."""
        return self.vae_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    @torch.no_grad()
    def embed_prompt(self, prompt: str) -> torch.Tensor:
        tokens = self.tokenizer(prompt, padding="max_length", truncation=True,
                                max_length=self.tokenizer.model_max_length, return_tensors="pt")
        return self.text_encoder(tokens.input_ids.to(self.device))[0].float()

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Image in [-1, 1] to the scaled latent z_0 (the posterior mean: deterministic)."""
        posterior = self.vae.encode(x.to(self.device, self.vae.dtype)).latent_dist
        return posterior.mean.float() * self.vae.config.scaling_factor

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        x = self.vae.decode((z / self.vae.config.scaling_factor).to(self.vae.dtype)).sample
        return x.float().clamp(-1, 1)

    def predict_noise(self, z: torch.Tensor, timestep: int | torch.Tensor,
                      context: torch.Tensor) -> torch.Tensor:
        """ε_Θ(z, t) in fp32, whatever precision the UNet runs at; differentiable in z (and
        in the LoRA weights while training). Every UNet pass goes through here and is counted.

        `context` holds one embedding per item of a batch of B; z holds whole copies of that
        item order (the [reference…, edited…] halves, or LoRA's view-major rows), so sample
        n is item n mod B."""
        context = context.repeat(z.shape[0] // context.shape[0], 1, 1).to(self.dtype)
        eps = self.unet(z.to(self.dtype), timestep, encoder_hidden_states=context).sample
        self.passes.count(eps)
        return eps.float()


PRESET_FILE = "dragnext.json"


def model_preset(spec: str | Path) -> dict:
    """Config keys a local model folder recommends for itself (its `dragnext.json`), e.g. a
    working size other than SD1.5's 512. They sit between the defaults and the user's keys."""
    path = Path(spec).expanduser() / PRESET_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


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


def check_model_present(spec: str | Path) -> None:
    """Raises `ModelNotFoundError` when `load_model(spec)` could not find the model: a path
    that is no folder, or (offline) a hub id the local cache does not hold. Loads nothing."""
    spec = str(spec)
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}
    if model_folder(spec) is None and (offline or spec.startswith((".", "/", "~"))):
        raise _not_found(spec, FileNotFoundError("not a local folder, and not in the Hugging Face cache"))


def load_model(spec: str | Path = DEFAULT_MODEL, device: torch.device | str | None = None,
               dtype: torch.dtype | None = None) -> DragModel:
    """Load a diffusers SD-architecture model from a hub id or a local folder.

    The UNet runs at `dtype` (half precision on CUDA by default); VAE and text encoder
    stay fp32, which costs little and keeps colours and embeddings exact.
    """
    spec = str(spec)
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_unet_dtype(device)
    local = Path(spec).expanduser()
    if spec.startswith((".", "/", "~")) and not local.is_dir():
        raise _not_found(spec, FileNotFoundError(f"no folder at {local}"))
    source = str(local) if local.is_dir() else spec
    try:
        parts = dict(
            unet=UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=dtype),
            vae=AutoencoderKL.from_pretrained(source, subfolder="vae"),
            text_encoder=CLIPTextModel.from_pretrained(source, subfolder="text_encoder"),
            tokenizer=CLIPTokenizer.from_pretrained(source, subfolder="tokenizer"),
            scheduler=DDIMScheduler.from_pretrained(source, subfolder="scheduler"),
        )
    except (OSError, ValueError) as error:
        raise _not_found(spec, error) from None
    for name in ("unet", "vae", "text_encoder"):
        module = parts[name].to(device)
        module.requires_grad_(False)
        module.eval()
    log.info("loaded model %s on %s (UNet %s)", spec, device, dtype)
    return DragModel(spec=spec, device=device, **parts)
