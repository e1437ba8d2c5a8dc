"""Which model an edit was made with: a fingerprint of the model's files, not of its name.

A stored result or stage may be reused only while the model that made it is the same. A
name says little: a local folder can be retrained in place, a hub id can move to a new
revision. So a local folder is fingerprinted by every file in it (relative path, size and
modification time, plus the content of its small config files), and a hub id by the
revision of the snapshot in the local cache that `load_model` would load.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

# Config files are hashed by content; weights by size and mtime (hashing GBs per run is too slow).
_CONTENT_SUFFIXES = (".json", ".txt", ".yaml", ".model")


def digest(*parts: object) -> str:
    """A short stable digest of bytes and JSON-able values."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def model_folder(spec: str | Path) -> Path | None:
    """The folder `load_model(spec)` reads: a local folder, or the hub id's cached snapshot
    (None when neither is there)."""
    local = Path(spec).expanduser()
    if local.is_dir():
        return local
    if str(spec).startswith((".", "/", "~")):
        return None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(spec), local_files_only=True))
    except Exception:  # not cached, or not a valid repo id: the caller decides
        return None


def model_fingerprint(spec: str | Path) -> str:
    """`name@digest` for a local folder, `id@revision` for a cached hub snapshot, or the
    name alone when the model cannot be found here (the edit will then fail to load it)."""
    folder = model_folder(spec)
    if folder is None:
        return str(spec)
    local = Path(spec).expanduser()
    if not local.is_dir():  # a hub snapshot: its folder name is the commit
        return f"{spec}@{folder.resolve().name}"
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = path.stat()
        h.update(json.dumps([str(path.relative_to(folder)), stat.st_size, stat.st_mtime_ns]).encode())
        if path.suffix in _CONTENT_SUFFIXES and stat.st_size < 1 << 20:
            h.update(path.read_bytes())
    return f"{os.path.abspath(folder)}@{h.hexdigest()[:16]}"


def unet_up_blocks(spec: str | Path) -> int | None:
    """How many decoder stages (`unet.up_blocks`) the model has, from its config alone."""
    folder = model_folder(spec)
    config = folder / "unet" / "config.json" if folder is not None else None
    if config is None or not config.is_file():
        return None
    try:
        return len(json.loads(config.read_text())["up_block_types"])
    except (ValueError, KeyError, TypeError):
        return None
