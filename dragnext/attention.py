"""Mutual self-attention (MasaCtrl): while a batch [reference, edited] is denoised, the
edited branch's self-attention layers in the last two decoder stages read keys and values from the
reference branch, so the content it renders is the reference's, at the edited layout."""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn


def self_attention_layers(unet: nn.Module) -> list[str]:
    """Names of the self-attention (`attn1`) processors in forward order: down, mid, up."""
    names = [n for n in unet.attn_processors if n.endswith("attn1.processor")]
    rank = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}
    return sorted(names, key=lambda n: rank[n.split(".")[0]])  # stable: keeps order within


class MutualSelfAttention:
    """Processor for one self-attention layer; the batch is each item's [reference, edited]
    pair, item-major."""

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states=None,
                 attention_mask=None, temb=None, **kwargs) -> torch.Tensor:
        batch, tokens, _ = hidden_states.shape
        heads = attn.heads

        def split_heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, -1, heads, x.shape[-1] // heads).transpose(1, 2)

        q = split_heads(attn.to_q(hidden_states))
        k = split_heads(attn.to_k(hidden_states))
        v = split_heads(attn.to_v(hidden_states))
        k = k[0::2].repeat_interleave(2, dim=0)  # each pair reads its reference's
        v = v[0::2].repeat_interleave(2, dim=0)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(batch, tokens, -1).to(q.dtype)
        return attn.to_out[1](attn.to_out[0](out)) / attn.rescale_output_factor


@contextmanager
def mutual_self_attention(unet: nn.Module, start: int):
    """Install mutual self-attention on self-attention layers from `start` (forward order;
    the paper's: `Architecture.mutual_start_layer`) onward; restore the original processors after."""
    layers = self_attention_layers(unet)
    if start >= len(layers):
        raise ValueError(f"attention.start_layer={start}: the UNet has {len(layers)} "
                         "self-attention layers")
    original = unet.attn_processors
    processors = dict(original)
    for name in layers[start:]:
        processors[name] = MutualSelfAttention()
    unet.set_attn_processor(processors)
    try:
        yield layers[start:]
    finally:
        unet.set_attn_processor(original)
