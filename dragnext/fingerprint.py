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


def files_fingerprint(path: str | Path) -> str:
    """`path@digest` of a local file or folder: every file's relative path, size and
    modification time, plus the content of its small config files; the path alone when
    nothing is there."""
    path = Path(path).expanduser()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    if not files:
        return str(path)
    h = hashlib.sha256()
    for file in files:
        stat = file.stat()
        h.update(json.dumps([str(file.relative_to(path)) if file != path else file.name,
                             stat.st_size, stat.st_mtime_ns]).encode())
        if file.suffix in _CONTENT_SUFFIXES and stat.st_size < 1 << 20:
            h.update(file.read_bytes())
    return f"{os.path.abspath(path)}@{h.hexdigest()[:16]}"


def model_fingerprint(spec: str | Path) -> str:
    """`name@digest` for a local folder, `id@revision` for a cached hub snapshot, or the
    name alone when the model cannot be found here (the edit will then fail to load it)."""
    folder = model_folder(spec)
    if folder is None:
        return str(spec)
    if not Path(spec).expanduser().is_dir():  # a hub snapshot: its folder name is the commit
        return f"{spec}@{folder.resolve().name}"
    return files_fingerprint(folder)
