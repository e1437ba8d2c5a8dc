"""Stage artefacts of an item (LoRA weights, inversion trajectory, optimised latent) as
safetensors under the run's output. Each carries the digest of its inputs, so a retry
reuses it only when nothing it was made from has changed."""

from __future__ import annotations

import hashlib
import json

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from manifests.storage import exists, join, read_bytes, write_bytes


def digest(*parts: object) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


class Artefacts:
    def __init__(self, item_dir: str):
        self.dir = join(item_dir, "artefacts")

    def uri(self, name: str) -> str:
        return join(self.dir, f"{name}.safetensors")

    def load(self, name: str, key: str) -> dict[str, torch.Tensor] | None:
        """The artefact if it exists and was made from inputs with this digest."""
        uri = self.uri(name)
        if not exists(uri):
            return None
        data = read_bytes(uri)
        header_len = int.from_bytes(data[:8], "little")  # safetensors: u64 length, JSON header
        metadata = json.loads(data[8:8 + header_len]).get("__metadata__", {})
        return load_tensors(data) if metadata.get("key") == key else None

    def save(self, name: str, key: str, tensors: dict[str, torch.Tensor]) -> str:
        uri = self.uri(name)
        contiguous = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        write_bytes(uri, save_tensors(contiguous, metadata={"key": key}))
        return uri
