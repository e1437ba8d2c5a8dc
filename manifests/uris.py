"""Where a manifest's images and masks may come from.

A manifest is untrusted input: without a policy, a row could make a worker read any file
it can reach (`/etc/…`, another tenant's bucket, an internal HTTP service) and paste it
into the outputs. A URI is allowed when, after resolving it against the manifest's folder
and normalising `..`, it lies under the manifest's own folder or prefix, or under one of
the run's allowed prefixes (`--allow-prefix`). So `http(s)://` and `file://` URIs, other
buckets and absolute paths elsewhere are read only when a prefix allows them. A refused
URI gets one message that says nothing about whether the object exists.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass

from manifests.storage import resolve


def normalise(uri: str) -> str:
    """An absolute URI with `.`/`..` folded, so a prefix test cannot be escaped."""
    if "://" in uri:
        protocol, path = uri.split("://", 1)
        return f"{protocol}://{posixpath.normpath('/' + path).lstrip('/')}" if protocol != "file" \
            else f"file://{posixpath.normpath(path)}"
    return os.path.normpath(os.path.abspath(uri))


def _under(uri: str, prefix: str) -> bool:
    prefix = prefix.rstrip("/")
    return uri == prefix or uri.startswith(prefix + "/")


@dataclass(frozen=True)
class UriPolicy:
    manifest_dir: str
    allowed_prefixes: tuple[str, ...] = ()

    def resolve(self, uri: str) -> str | None:
        """The URI to read, or None when the policy refuses it."""
        target = normalise(resolve(uri, self.manifest_dir))
        roots = [normalise(self.manifest_dir), *(normalise(p) for p in self.allowed_prefixes)]
        return target if any(_under(target, root) for root in roots) else None

    def refusal(self, uri: str) -> str:
        return (f"'{uri}' is outside the manifest's folder and the run's allowed prefixes "
                "(allow it with --allow-prefix)")
