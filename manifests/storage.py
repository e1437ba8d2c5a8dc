"""All I/O goes through fsspec: local paths and `file://` by default, `s3://` on any
S3-compatible store. The endpoint and keys come from the standard AWS variables
(`AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, …) or fsspec's own config,
never from a manifest. Writes are whole objects: bytes are built first, then put.

A store that is briefly unreachable or overloaded is expected, not exceptional: writes are
retried with exponential back-off (`STORE_RETRIES`, `STORE_BACKOFF_S`), and every layer
asks `is_transient` whether an error is worth another try.
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import time
from collections.abc import Callable
from typing import TypeVar

import fsspec
from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError
from fsspec.core import url_to_fs
from fsspec.spec import AbstractFileSystem
from prefect.tasks import exponential_backoff

log = logging.getLogger(__name__)
T = TypeVar("T")

# 1 + 2 + 4 + 8 + 16 s: rides out a store outage of about half a minute.
STORE_RETRIES = int(os.environ.get("DRAGNEXT_STORE_RETRIES", "5"))
STORE_BACKOFF_S = float(os.environ.get("DRAGNEXT_STORE_BACKOFF_S", "1.0"))

# OSErrors that say the request was understood and refused: another try cannot help.
_PERMANENT_OSERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError,
                       FileExistsError)
_TRANSIENT_S3_CODES = {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout",
                       "RequestTimeTooSkewed", "500", "502", "503", "504"}


class StoreUnavailable(OSError):
    """The store stayed unreachable through every retry."""


def _transient_one(error: BaseException) -> bool:
    if isinstance(error, (BotoConnectionError, HTTPClientError, TimeoutError, ConnectionError)):
        return True  # refused, reset, timed out: botocore's are not OSErrors
    if isinstance(error, ClientError):
        return str(error.response.get("Error", {}).get("Code")) in _TRANSIENT_S3_CODES
    if isinstance(error, OSError):
        return not isinstance(error, _PERMANENT_OSERRORS) and error.errno != errno.ENOSPC
    return False


def is_transient(error: BaseException) -> bool:
    """Worth retrying: a connection or timeout error, a 5xx/SlowDown, or an I/O error, also
    when it is the cause of the error raised (s3fs wraps botocore's errors)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if _transient_one(error):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def with_retries(action: Callable[[], T], what: str, retries: int | None = None) -> T:
    """`action()`, retried on transient store errors with exponential back-off; raises
    `StoreUnavailable` when the store is still down after the last try."""
    delays = exponential_backoff(STORE_BACKOFF_S)(STORE_RETRIES if retries is None else retries)
    for attempt, delay in enumerate([*delays, None]):
        try:
            return action()
        except Exception as error:
            if not is_transient(error):
                raise
            if delay is None:
                raise StoreUnavailable(f"{what}: store unreachable after {attempt + 1} tries "
                                       f"({type(error).__name__}: {error})") from error
            log.warning("%s: %s: %s; retrying in %.1f s", what, type(error).__name__, error, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


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
    return with_retries(lambda: fs.cat_file(path), f"reading {uri}")


def write_bytes(uri: str, data: bytes) -> None:
    """Put a whole object, retried while the store is unreachable; a failure leaves no
    partial object behind."""
    fs, path = filesystem(uri)

    def put() -> None:
        if not is_remote(uri):
            fs.makedirs(parent(path), exist_ok=True)
        fs.pipe_file(path, data)

    with_retries(put, f"writing {uri}")


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def list_names(uri: str) -> list[str]:
    """The names of the objects directly under a folder or prefix (none if it is absent)."""
    fs, path = filesystem(uri)

    def names() -> list[str]:
        try:
            return [posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False)]
        except FileNotFoundError:
            return []

    return with_retries(names, f"listing {uri}")


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)
