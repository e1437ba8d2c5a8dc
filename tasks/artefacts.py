"""Stage artefacts of an item (LoRA weights, inversion trajectory, optimised latent) as
safetensors under the run's output. Each carries the digest of its inputs, so a retry
reuses it only when nothing it was made from has changed."""

from __future__ import annotations

import hashlib
import json

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from manifests.storage import filesystem, join, read_bytes, write_bytes


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

    def key_of(self, name: str) -> str | None:
        """The input digest stored with an artefact, read from its header alone."""
        fs, path = filesystem(self.uri(name))
        if not fs.exists(path):
            return None
        header_len = int.from_bytes(fs.cat_file(path, start=0, end=8), "little")  # safetensors: u64
        header = json.loads(fs.cat_file(path, start=8, end=8 + header_len))
        return header.get("__metadata__", {}).get("key")

    def load(self, name: str, key: str) -> dict[str, torch.Tensor] | None:
        """The artefact if it exists and was made from inputs with this digest."""
        if self.key_of(name) != key:
            return None
        return load_tensors(read_bytes(self.uri(name)))

    def save(self, name: str, key: str, tensors: dict[str, torch.Tensor]) -> str:
        uri = self.uri(name)
        contiguous = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        write_bytes(uri, save_tensors(contiguous, metadata={"key": key}))
        return uri
