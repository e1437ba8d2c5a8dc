"""The UNet's conditioning for a prompt, per family (`dragnext.architecture`):

    SD1.x, SD2.x   c = E(prompt), the text encoder's last hidden state (L, D);
    SDXL           c = [E₁(prompt)₋₂ ; E₂(prompt)₋₂], both encoders' penultimate hidden
                   states concatenated over channels, plus the added conditioning:
                   the pooled (projected) embedding of E₂ and the time ids
                   (h, w, 0, 0, h, w) of an uncropped image at the working size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Conditioning:
    """One row per item of a batch."""
    hidden: torch.Tensor  # (B, L, D): the cross-attention context
    pooled: torch.Tensor | None = None  # (B, P): SDXL's text_embeds
    time_ids: torch.Tensor | None = None  # (B, 6): SDXL's time_ids

    @property
    def batch(self) -> int:
        return self.hidden.shape[0]

    @staticmethod
    def cat(items: list[Conditioning]) -> Conditioning:
        def joined(name: str) -> torch.Tensor | None:
            parts = [getattr(c, name) for c in items]
            return None if parts[0] is None else torch.cat(parts)

        return Conditioning(joined("hidden"), joined("pooled"), joined("time_ids"))

    def unet_kwargs(self, samples: int, dtype: torch.dtype) -> dict:
        """Keyword arguments of the UNet's forward for `samples` samples laid out item-major
        (item b's c samples are rows b·c … b·c + c − 1)."""
        copies = samples // self.batch

        def rows(x: torch.Tensor) -> torch.Tensor:
            return (x if copies == 1 else x.repeat_interleave(copies, dim=0)).to(dtype)

        kwargs: dict = {"encoder_hidden_states": rows(self.hidden)}
        if self.pooled is not None:
            kwargs["added_cond_kwargs"] = {"text_embeds": rows(self.pooled), "time_ids": rows(self.time_ids)}
        return kwargs


def _token_ids(tokenizer, prompt: str, device: torch.device) -> torch.Tensor:
    return tokenizer(prompt, padding="max_length", truncation=True, max_length=tokenizer.model_max_length,
                     return_tensors="pt").input_ids.to(device)


@torch.no_grad()
def embed_prompt(prompt: str, text_encoders: list[nn.Module], tokenizers: list, size: tuple[int, int],
                 device: torch.device) -> Conditioning:
    """The conditioning of `prompt` for an image of `size` (h, w), fp32."""
    if len(text_encoders) == 1:
        hidden = text_encoders[0](_token_ids(tokenizers[0], prompt, device))[0]
        return Conditioning(hidden.float())
    outs = [encoder(_token_ids(tokenizer, prompt, device), output_hidden_states=True)
            for encoder, tokenizer in zip(text_encoders, tokenizers, strict=True)]
    states = [out.hidden_states[-2] for out in outs]
    pooled = outs[-1].text_embeds  # the projected E₂
    h, w = size
    time_ids = torch.tensor([[h, w, 0, 0, h, w]], dtype=torch.float32, device=device)
    return Conditioning(torch.cat(states, dim=-1).float(), pooled.float(), time_ids)
