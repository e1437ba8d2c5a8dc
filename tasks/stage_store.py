"""Stored stage outputs of an item (LoRA weights, inversion trajectory, edited latent, z_0)
as safetensors under `OUT/items/ID/stages/`. Each carries the digest of its inputs, so a
retry reuses it only when nothing it was made from has changed. (Not to be confused with
Prefect's UI artifacts, which `flows/` publishes.)"""

from __future__ import annotations

import json
import logging
from typing import Any

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from manifests.storage import filesystem, is_transient, join, read_bytes, with_retries, write_bytes

log = logging.getLogger(__name__)
MAX_HEADER_BYTES = 1 << 20  # a stage's header holds a few tensor names and one key


def to_tensors(name: str, output: Any) -> dict[str, torch.Tensor]:
    """A stage's output as named tensors: LoRA weights as they are, latents as `z`."""
    if name == "lora":
        return output
    return {"z": torch.stack(output) if name == "inversion" else output}


def from_tensors(name: str, tensors: dict[str, torch.Tensor], device: torch.device) -> Any:
    if name == "lora":
        return tensors
    z = tensors["z"].to(device)
    return list(z.unbind(0)) if name == "inversion" else z


class StageStore:
    def __init__(self, item_dir: str):
        self.dir = join(item_dir, "stages")

    def uri(self, name: str) -> str:
        return join(self.dir, f"{name}.safetensors")

    def key_of(self, name: str) -> str | None:
        """The input digest stored with an output, read from its header alone."""
        fs, path = filesystem(self.uri(name))

        def read() -> str | None:
            if not fs.exists(path):
                return None
            header_len = int.from_bytes(fs.cat_file(path, start=0, end=8), "little")  # safetensors: u64
            if not 0 < header_len <= MAX_HEADER_BYTES:
                return None
            try:
                header = json.loads(fs.cat_file(path, start=8, end=8 + header_len))
                return header.get("__metadata__", {}).get("key")
            except (ValueError, AttributeError):  # torn or foreign: recomputed, never trusted
                return None

        return with_retries(read, f"reading the header of {self.uri(name)}")

    def load(self, name: str, key: str) -> dict[str, torch.Tensor] | None:
        """The stored output if it exists, is whole, and was made from inputs with this digest."""
        if self.key_of(name) != key:
            return None
        try:
            return load_tensors(read_bytes(self.uri(name)))
        except Exception as error:  # safetensors raises its own error types for a torn file
            if is_transient(error):
                raise
            log.warning("stage %s is unreadable (%s); computing it again", self.uri(name), error)
            return None

    def save(self, name: str, key: str, tensors: dict[str, torch.Tensor]) -> str:
        uri = self.uri(name)
        contiguous = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        write_bytes(uri, save_tensors(contiguous, metadata={"key": key}))
        return uri
