"""All I/O goes through fsspec: local paths and `file://` by default, `s3://` on any
S3-compatible store. The endpoint and keys come from the standard AWS variables
(`AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, …) or fsspec's own config,
never from a manifest. Writes are whole objects: bytes are built first, then put; a local
file is written under a temporary name and renamed, so a reader never sees half of one
(an S3 put is atomic already).

A full disk, a read-only folder or a refused write is permanent (`OutputUnwritable`): no
retry can help, so the run stops dispatching instead of failing every item in turn.

A store that is briefly unreachable or overloaded is expected, not exceptional: writes are
retried with exponential back-off (`retry_policy`), and every layer
asks `is_transient` whether an error is worth another try.
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import fsspec
from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError
from fsspec.core import url_to_fs
from fsspec.spec import AbstractFileSystem

log = logging.getLogger(__name__)
T = TypeVar("T")

# 1 + 2 + 4 + 8 + 16 s: rides out a store outage of about half a minute.
def retry_policy() -> tuple[int, float]:
    """Retries of a transient store error, and the first back-off (doubling), read when used:
    `DRAGNEXT_STORE_RETRIES` (5) and `DRAGNEXT_STORE_BACKOFF_S` (1.0)."""
    return (int(os.environ.get("DRAGNEXT_STORE_RETRIES", "5")),
            float(os.environ.get("DRAGNEXT_STORE_BACKOFF_S", "1.0")))

# OSErrors that say the request was understood and refused: another try cannot help.
_PERMANENT_OSERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError,
                       FileExistsError)
_TRANSIENT_S3_CODES = {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout",
                       "RequestTimeTooSkewed", "500", "502", "503", "504"}


class StoreUnavailable(OSError):
    """The store stayed unreachable through every retry."""


class OutputUnwritable(OSError):
    """The output cannot take writes (disk full, read-only, permission refused): permanent."""


# errno → what a user is told; the words "disk full" and "read-only" are what they look for.
_UNWRITABLE = {errno.ENOSPC: "disk full (no space left on device)",
               errno.EDQUOT: "disk full (quota exceeded)",
               errno.EFBIG: "disk full (file too large)",
               errno.EROFS: "read-only file system",
               errno.EACCES: "not writable (permission denied)",
               errno.EPERM: "not writable (operation not permitted)"}


def unwritable_reason(error: BaseException) -> str | None:
    """Why a write can never succeed, or None when it might (also through wrapped causes)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OutputUnwritable):
            return str(error)
        if isinstance(error, OSError) and error.errno in _UNWRITABLE:
            return _UNWRITABLE[error.errno]
        seen.add(id(error))
        error = _cause(error)
    return None


def _transient_one(error: BaseException) -> bool:
    if isinstance(error, (BotoConnectionError, HTTPClientError, TimeoutError, ConnectionError)):
        return True  # refused, reset, timed out: botocore's are not OSErrors
    if isinstance(error, ClientError):
        return str(error.response.get("Error", {}).get("Code")) in _TRANSIENT_S3_CODES
    if isinstance(error, OSError):
        permanent = isinstance(error, (*_PERMANENT_OSERRORS, OutputUnwritable)) or error.errno in _UNWRITABLE
        return not permanent
    return False


def _cause(error: BaseException) -> BaseException | None:
    """What `error` was raised from; not the exception being handled when it was raised
    `from None` (a `WorkerLost` raised while handling an EOFError is no I/O error)."""
    if error.__cause__ is not None:
        return error.__cause__
    return None if error.__suppress_context__ else error.__context__


def is_transient(error: BaseException) -> bool:
    """Worth retrying: a connection or timeout error, a 5xx/SlowDown, or an I/O error, also
    when it is the cause of the error raised (s3fs wraps botocore's errors)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if _transient_one(error):
            return True
        seen.add(id(error))
        error = _cause(error)
    return False


def with_retries(action: Callable[[], T], what: str, retries: int | None = None) -> T:
    """`action()`, retried on transient store errors with exponential back-off; raises
    `StoreUnavailable` when the store is still down after the last try."""
    default_retries, backoff_s = retry_policy()
    delays = [backoff_s * 2**k for k in range(default_retries if retries is None else retries)]
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


def link_expiry_s() -> int:
    """How long a link in a run's artifacts opens its output: `DRAGNEXT_LINK_EXPIRY_S`
    (7 days, the longest an S3 presigned URL lives), read when used."""
    return int(os.environ.get("DRAGNEXT_LINK_EXPIRY_S", str(7 * 24 * 3600)))


def browser_link(uri: str, expiry_s: int) -> str | None:
    """A URL a browser opens for `uri`: presigned on a store that signs (S3, for
    `expiry_s`); None for a local path, which a web page cannot link to (file:// is
    blocked from http pages), or when the store cannot sign."""
    if not is_absolute(uri) or "://" not in uri or uri.startswith("file://"):
        return None
    fs, path = filesystem(uri)
    try:
        return fs.sign(path, expiration=expiry_s)
    except NotImplementedError:
        return None


def absolute(uri: str) -> str:
    """A URI that means the same from any working directory."""
    return uri if "://" in uri else os.path.abspath(uri)


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


# Enough for the size in any image header this project reads (PNG's IHDR is in the first 33).
HEADER_BYTES = 64 * 1024


class NotARegularFile(ValueError):
    """A path that names a folder, FIFO, socket or device: never opened."""


def read_bytes(uri: str, end: int | None = None) -> bytes:
    """The object's bytes, or its first `end` bytes (a ranged read on a store)."""
    fs, path = filesystem(uri)
    return with_retries(lambda: fs.cat_file(path, end=end), f"reading {uri}")


def regular_file_size(uri: str, look: Callable[[str], dict] | None = None) -> int:
    """The size of a regular file or object; raises `FileNotFoundError` or `NotARegularFile`
    (local paths are looked at with stat, which opens nothing; objects with `look`, by
    default `object_info`)."""
    if not is_remote(uri):
        try:
            mode = os.stat(_local_path(uri))
        except NotADirectoryError:
            raise FileNotFoundError(uri) from None
        if stat.S_ISDIR(mode.st_mode):
            raise NotARegularFile("is a directory, not a file")
        if not stat.S_ISREG(mode.st_mode):
            raise NotARegularFile("is not a regular file (a FIFO, socket or device)")
        return mode.st_size
    return int((look or object_info)(uri).get("size") or 0)


def object_info(uri: str) -> dict:
    """What a store says of an object (size, ETag, …), one HEAD; `NotARegularFile` for a
    prefix or anything else that is no object."""
    fs, path = filesystem(uri)
    info = with_retries(lambda: fs.info(path), f"looking up {uri}")
    if info.get("type") != "file":
        raise NotARegularFile(f"is a {info.get('type', 'non-file')}, not a file")
    return info


def write_file_atomic(path: str, data: bytes, exclusive: bool = False) -> bool:
    """Write `path` through a temporary file in its folder, then rename (or, `exclusive`,
    hard-link: fails when `path` exists). A crash or a full disk leaves the old file, or
    none, never a torn one. Returns False when `exclusive` found the file there."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix="-" + os.path.basename(path))
    try:
        os.fchmod(handle, 0o666 & ~_umask())  # mkstemp's 0600 would hide outputs from their readers
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        if not exclusive:
            os.replace(temporary, path)
            return True
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False
        return True
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def _umask() -> int:
    """The process's umask, read without setting it (os.umask would race other threads)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def _local_path(uri: str) -> str:
    return uri.removeprefix("file://")


def write_bytes(uri: str, data: bytes) -> None:
    """Put a whole object, retried while the store is unreachable; a failure leaves no
    partial object behind. Raises `OutputUnwritable` at once for a full or read-only output."""
    if is_remote(uri):
        fs, path = filesystem(uri)
        action = lambda: fs.pipe_file(path, data)  # noqa: E731
    else:
        action = lambda: write_file_atomic(_local_path(uri), data)  # noqa: E731
    _unwritable_or(lambda: with_retries(action, f"writing {uri}"), uri)


def create_exclusive(uri: str, data: bytes) -> bool:
    """Write `uri` only if nothing is there yet (a conditional put on S3); False if something
    was. Stores without conditional writes fall back to check-then-put."""
    if not is_remote(uri):
        return _unwritable_or(lambda: write_file_atomic(_local_path(uri), data, exclusive=True), uri)
    fs, path = filesystem(uri)

    def put() -> bool:
        try:
            fs.pipe_file(path, data, mode="create")
            return True
        except FileExistsError:
            return False
        except OSError as error:
            if error.errno == errno.EINVAL and "Precondition" in str(error):  # s3fs: 412
                return False
            raise
        except (TypeError, NotImplementedError):  # no conditional writes here
            if fs.exists(path):
                return False
            fs.pipe_file(path, data)
            return True

    return _unwritable_or(lambda: with_retries(put, f"creating {uri}"), uri)


def _unwritable_or(action: Callable[[], T], uri: str) -> T:
    try:
        return action()
    except OutputUnwritable:
        raise
    except Exception as error:
        reason = unwritable_reason(error)
        if reason is None:
            raise
        raise OutputUnwritable(f"writing {uri}: {reason}") from error


def check_writable(folder_uri: str) -> None:
    """Write and remove a small probe object under a folder; raises `OutputUnwritable` for a
    full or read-only output (a store that is down raises `StoreUnavailable`)."""
    probe = join(folder_uri, f".dragnext-probe-{os.getpid()}")
    write_bytes(probe, b"probe")
    delete(probe)


def delete(uri: str) -> None:
    """Remove an object if it is there."""
    fs, path = filesystem(uri)

    def remove() -> None:
        try:
            fs.rm_file(path)
        except FileNotFoundError:
            pass

    with_retries(remove, f"deleting {uri}")


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


class Once:
    """Each call's result, or the error it raised, once per (function, arguments) for the
    life of this object: a manifest of 100 000 rows over 1 000 images makes 1 000 looks at
    the store, not 100 000. Transient errors are not kept (the next call asks again)."""

    def __init__(self) -> None:
        self._done: dict[tuple, tuple[bool, Any]] = {}
        self._lock = threading.Lock()

    def __call__(self, fn: Callable[..., T], *args: Any) -> T:
        key = (fn, args)
        with self._lock:
            found = self._done.get(key)
        if found is None:
            try:
                found = (True, fn(*args))
            except (OSError, ValueError) as error:
                if is_transient(error):
                    raise
                found = (False, error)
            with self._lock:
                self._done[key] = found
        ok, value = found
        if not ok:
            raise value
        return value

    def info(self, uri: str) -> dict:
        """`object_info` once per URI: validation's look and the digest share one HEAD."""
        return self(object_info, uri)
