"""What an item's result was made from, as one digest, so a rerun keeps a result only while
every input is unchanged: the image's and masks' bytes, the drags and prompt, the resolved
config and the model's fingerprint (`dragnext.fingerprint`).

A local file is hashed by its bytes. An object on a store is identified by what the store
says of it (ETag, size, and version where the store keeps versions), one HEAD request, so a
resume of 100 000 items does not download every image again.
"""

from __future__ import annotations

from collections.abc import Callable

from dragnext.fingerprint import digest
from manifests.storage import is_remote, object_info, read_bytes, regular_file_size


def file_identity(uri: str, look: Callable[[str], dict] | None = None) -> str:
    """Changes whenever the file's content does. Opens nothing but a regular file. An
    object is looked at with `look` (by default `object_info`)."""
    if not is_remote(uri):
        regular_file_size(uri)  # a stat: a FIFO is never opened
        return digest(uri, read_bytes(uri))
    info = (look or object_info)(uri)
    tag = info.get("ETag") or info.get("etag") or info.get("VersionId")
    if tag:
        return digest(uri, str(tag), info.get("size"), info.get("VersionId"))
    return digest(uri, read_bytes(uri))


def input_digest(row_inputs: dict, identities: list[str], config: dict, model_fingerprint: str) -> str:
    """The digest of one item's inputs: its row's instruction fields, the identity of each
    file it reads (`file_identity`), its config and the model."""
    return digest(row_inputs, identities, config, model_fingerprint)
