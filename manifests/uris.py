"""Where a manifest's images and masks may come from.

A manifest is untrusted input: without a policy, a row could make a worker read any file
it can reach (`/etc/…`, another tenant's bucket, an internal HTTP service) and paste it
into the outputs. A URI is allowed when, after resolving it against the manifest's folder
and normalising `..`, it lies under the manifest's own folder or prefix, or under one of
the run's allowed prefixes (`--allow-prefix`). So `http(s)://` and `file://` URIs, other
buckets and absolute paths elsewhere are read only when a prefix allows them. A refused
URI gets one message that says nothing about whether the object exists.

The check is made on what will be read, not on how it is spelt: a local path is resolved
to its real path first (a symlink inside the folder that points outside it is outside),
and a URL's path is percent-decoded until it no longer changes (`%2e%2e`, `..%2f`,
`%252e`) and normalised before the prefix test; the decoded form is what is then read.
A prefix must be absolute and non-empty (an empty one would mean "the current folder").
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from urllib.parse import unquote

from manifests.storage import resolve

URL_PROTOCOLS = ("http", "https")


class PolicyError(ValueError):
    """An allowed prefix that cannot be used (empty or relative)."""


def _decoded(path: str) -> str:
    """Percent-decoding repeated until stable, with backslashes as slashes (some servers
    treat them so), so no spelling of `..` survives to the server."""
    for _ in range(8):
        decoded = unquote(path).replace("\\", "/")
        if decoded == path:
            break
        path = decoded
    return path


def normalise(uri: str) -> str:
    """An absolute URI with `.`/`..` folded and local symlinks resolved, so a prefix test
    cannot be escaped."""
    if "://" in uri:
        protocol, path = uri.split("://", 1)
        if protocol == "file":
            return f"file://{os.path.realpath(_decoded(path))}"
        if protocol in URL_PROTOCOLS:  # a server decodes the path; a store's keys are literal
            path = _decoded(path)
        return f"{protocol}://{posixpath.normpath('/' + path).lstrip('/')}"
    return os.path.realpath(os.path.abspath(uri))


def check_prefix(prefix: str) -> str:
    """An allowed prefix as given, or `PolicyError` when it is empty or relative."""
    if not prefix.strip():
        raise PolicyError("an empty --allow-prefix would allow the current folder: give an absolute "
                          "path or a URI")
    if "://" not in prefix and not os.path.isabs(prefix):
        raise PolicyError(f"--allow-prefix '{prefix}' is relative: give an absolute path or a URI")
    return prefix


def _under(uri: str, prefix: str) -> bool:
    prefix = prefix.rstrip("/")
    return uri == prefix or uri.startswith(prefix + "/")


@dataclass(frozen=True)
class UriPolicy:
    manifest_dir: str
    allowed_prefixes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for prefix in self.allowed_prefixes:
            check_prefix(prefix)

    def resolve(self, uri: str) -> str | None:
        """The URI to read, or None when the policy refuses it."""
        target = normalise(resolve(uri, self.manifest_dir))
        roots = [normalise(self.manifest_dir), *(normalise(p) for p in self.allowed_prefixes)]
        return target if any(_under(target, root) for root in roots) else None

    def refusal(self, uri: str) -> str:
        return (f"'{uri}' is outside the manifest's folder and the run's allowed prefixes "
                "(allow it with --allow-prefix)")
