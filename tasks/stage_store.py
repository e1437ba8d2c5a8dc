"""The stage graph's cache (`dragnext.graph.StageCache`) on the run's output: each item's
stored stage outputs (LoRA weights, inversion trajectory, edited latent, z_0) as
safetensors under `OUT/items/ID/stages/`. Each carries its stage key, so a retry reuses it
only when nothing it was made from has changed. (Not to be confused with Prefect's UI
artifacts, which `flows/` publishes.)"""

from __future__ import annotations

import json
import logging

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from manifests.storage import filesystem, is_transient, join, read_bytes, with_retries, write_bytes

log = logging.getLogger(__name__)
MAX_HEADER_BYTES = 1 << 20  # a stage's header holds a few tensor names and one key


class StageStore:
    def __init__(self, output_uri: str):
        self.output_uri = output_uri

    def uri(self, item_id: str, name: str) -> str:
        return join(self.output_uri, "items", item_id, "stages", f"{name}.safetensors")

    def key_of(self, item_id: str, name: str) -> str | None:
        """The key stored with an output, read from its header alone."""
        uri = self.uri(item_id, name)
        fs, path = filesystem(uri)

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

        return with_retries(read, f"reading the header of {uri}")

    def load(self, item_id: str, name: str, key: str) -> dict[str, torch.Tensor] | None:
        """The stored output if it exists, is whole, and was made from inputs with this key."""
        if self.key_of(item_id, name) != key:
            return None
        uri = self.uri(item_id, name)
        try:
            return load_tensors(read_bytes(uri))
        except Exception as error:  # safetensors raises its own error types for a torn file
            if is_transient(error):
                raise
            log.warning("stage %s is unreadable (%s); computing it again", uri, error)
            return None

    def save(self, item_id: str, name: str, key: str, tensors: dict[str, torch.Tensor]) -> str:
        uri = self.uri(item_id, name)
        contiguous = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        write_bytes(uri, save_tensors(contiguous, metadata={"key": key}))
        return uri
