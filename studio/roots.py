"""Where the studio may read and write: the pipeline's URI policy (`manifests/uris.py`) over
the roots its command was given, so a value typed into a page, a results row or a link from
another site cannot make the studio read `/etc/passwd`, fetch an `http://` or `file://`
URL, spend its S3 credentials on another bucket, or write a manifest into a new folder.

- Read: the folders of `--manifest` and `--results`, every `--allow-prefix`, and the
  write roots.
- Write (manifests): the `--manifest` file itself and every `--write-prefix`. A manifest's
  images and masks go beside it (`images/`, `masks/`); a run's retry selections go to
  its own `retries/` folder, so opening a run is enough to send items back.

A refused URI gets one sentence naming the field, never whether the object exists."""

from __future__ import annotations

from dataclasses import dataclass

from manifests.storage import absolute, parent
from manifests.uris import PolicyError, UriPolicy, check_prefix


class Refused(PermissionError):
    """A URI outside the studio's roots (answered 403)."""


def _policy(roots: tuple[str, ...], base: str | None = None) -> UriPolicy | None:
    """A policy that allows exactly `roots` (and `base`, a run's or manifest's own folder)."""
    allowed = ((base,) if base else ()) + roots
    return UriPolicy(allowed[0], allowed[1:]) if allowed else None


@dataclass(frozen=True)
class Roots:
    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()

    @classmethod
    def of(cls, manifest: str | None = None, results: str | None = None, allow_prefixes=(),
           write_prefixes=()) -> Roots:
        """The roots a studio command line gives; raises `PolicyError` for a relative or empty
        prefix (as `dragnext run --allow-prefix` does)."""
        for prefix in allow_prefixes:
            check_prefix(prefix)
        for prefix in write_prefixes:
            try:
                check_prefix(prefix)
            except PolicyError as error:
                raise PolicyError(str(error).replace("--allow-prefix", "--write-prefix")) from None
        write = tuple(absolute(m) for m in [manifest] if m) + tuple(write_prefixes)
        read = tuple(parent(absolute(u)) for u in (manifest, results) if u) + tuple(allow_prefixes)
        return cls(read=read + write, write=write)

    def readable(self, field: str, uri: str) -> str:
        """The absolute URI to read for a value the page sent, or `Refused`."""
        return self._check(field, uri, self.read, "read", "--allow-prefix")

    def writable(self, field: str, uri: str) -> str:
        return self._check(field, uri, self.write, "write", "--write-prefix")

    @staticmethod
    def _check(field: str, uri: str, roots: tuple[str, ...], verb: str, option: str) -> str:
        policy = _policy(roots)
        found = policy.resolve(absolute(uri)) if policy and uri.strip() else None
        if found is None:
            raise Refused(f"{field}: the studio may not {verb} '{uri}' (it {verb}s only under "
                          f"{', '.join(roots) or 'no folder yet'}; give another with {option})")
        return found

    def file_policy(self, own_folder: str) -> UriPolicy:
        """What a results row or a manifest row may name: its own folder and the read roots."""
        return _policy(self.read, own_folder)
