"""Which weights an edit runs on: a model (hub id or diffusers folder), optionally with its
VAE replaced by a separate AutoencoderKL folder and a style LoRA fused into it."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from dragnext.fingerprint import files_fingerprint, model_fingerprint

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"


class ModelSource(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(DEFAULT_MODEL, description="hub id or local diffusers folder")
    vae: str | None = Field(None, description="an AutoencoderKL folder that replaces the model's VAE")
    lora: str | None = Field(None, description="a style LoRA (diffusers or kohya .safetensors, or a "
                             "folder holding one), fused into the model before any edit")
    lora_scale: float = Field(1.0, ge=-100, le=100, allow_inf_nan=False,
                              description="the style LoRA's weight when fused")

    @classmethod
    def of(cls, value: ModelSource | str | dict) -> ModelSource:
        if isinstance(value, ModelSource):
            return value
        return cls(model=value) if isinstance(value, str) else cls.model_validate(value)

    def fingerprint(self) -> str:
        """Decides whether a stored result or stage may be reused: each part's files, not its name."""
        parts = [model_fingerprint(self.model)]
        if self.vae:
            parts.append(f"vae={model_fingerprint(self.vae)}")
        if self.lora:
            parts.append(f"lora={files_fingerprint(self.lora)}*{self.lora_scale:g}")
        return " ".join(parts)

    def to_record(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def __str__(self) -> str:
        extra = [f"vae {self.vae}"] if self.vae else []
        extra += [f"style LoRA {self.lora} ×{self.lora_scale:g}"] if self.lora else []
        return self.model + (f" ({', '.join(extra)})" if extra else "")
