"""All I/O goes through fsspec: local paths and `file://` by default, `s3://` on any
S3-compatible store. The endpoint and keys come from the standard AWS variables
(`AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, …) or fsspec's own config,
never from a manifest. Writes are whole objects: bytes are built first, then put.
"""

from __future__ import annotations

import os
import posixpath

import fsspec
from fsspec.core import url_to_fs
from fsspec.spec import AbstractFileSystem


def _options(protocol: str) -> dict:
    if protocol not in ("s3", "s3a"):
        return {}
    # Several processes write one run's objects: a cached listing would hide theirs.
    options: dict = {"use_listings_cache": False}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        options["client_kwargs"] = {"endpoint_url": endpoint}
    return options


def filesystem(uri: str) -> tuple[AbstractFileSystem, str]:
    protocol = fsspec.utils.get_protocol(uri)
    return url_to_fs(uri, **_options(protocol))


def is_absolute(uri: str) -> bool:
    return "://" in uri or uri.startswith("/")


def join(base: str, *parts: str) -> str:
    """`base` / parts, for local paths and URIs alike."""
    return posixpath.join(base.rstrip("/"), *parts) if "://" in base else os.path.join(base, *parts)


def parent(uri: str) -> str:
    return posixpath.dirname(uri.rstrip("/")) if "://" in uri else os.path.dirname(os.path.abspath(uri))


def resolve(uri: str, base_dir: str) -> str:
    """A manifest's URI: relative ones resolve against the manifest's folder."""
    if is_absolute(uri):
        return uri
    if "://" in base_dir:
        protocol, path = base_dir.split("://", 1)
        return f"{protocol}://{posixpath.normpath(posixpath.join(path, uri))}"
    return os.path.normpath(os.path.join(base_dir, uri))


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    return fs.cat_file(path)


def write_bytes(uri: str, data: bytes) -> None:
    """Put a whole object; a failure leaves no partial object behind."""
    fs, path = filesystem(uri)
    if "://" not in uri or uri.startswith("file://"):
        fs.makedirs(parent(path), exist_ok=True)
    fs.pipe_file(path, data)


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)
