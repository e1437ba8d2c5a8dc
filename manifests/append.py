"""Rows appended to a manifest without changing any other: the file as it is stored (its
columns' types, fields the schema does not know, bytes that are not UTF-8, its metadata)
plus the new rows, written whole while the manifest's append lock (`manifests.lock`, an
object beside it) is held, so appends from several processes or hosts all land."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pyarrow as pa

from manifests import lock
from manifests.items import conform
from manifests.schema import MANIFEST, ManifestError, read_table
from manifests.storage import exists

# An append reads and rewrites one file: a lock older than this is a crashed writer's.
STALE_AFTER_S = 120.0
WAIT_S = 30.0  # within the studio's store-call timeout: an append it reports as failed did not land


class ManifestBusy(RuntimeError):
    """Another writer held the manifest's append lock for longer than `WAIT_S`."""


def lock_uri(manifest_uri: str) -> str:
    return manifest_uri + ".lock"


@contextmanager
def locked(manifest_uri: str, owner: str, wait_s: float = WAIT_S) -> Iterator[pa.Table]:
    """The manifest as stored (an empty one if there is none yet), its append lock held for
    the block; waits up to `wait_s` for another writer's append to finish."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            lock.acquire(lock_uri(manifest_uri), owner, STALE_AFTER_S, name=f"manifest {manifest_uri}")
            break
        except lock.Held as held:
            if time.monotonic() > deadline:
                raise ManifestBusy(f"manifest {manifest_uri} is being appended to by {held} for over "
                                   f"{wait_s:.0f} s; try again") from None
            time.sleep(random.uniform(0.05, 0.25))  # apart, so that writers do not retry in step
    try:
        yield read_table(manifest_uri) if exists(manifest_uri) else MANIFEST.empty_table()
    finally:
        lock.release(lock_uri(manifest_uri), owner)


def appended(table: pa.Table, rows: list[dict]) -> pa.Table:
    """`table` as it is, with `rows` (manifest rows) after its own and the manifest columns it
    lacks added as nulls. Raises `ManifestError` where its schema cannot hold a row as given."""
    for field in MANIFEST:
        if field.name not in table.column_names:
            table = table.append_column(field.with_nullable(True), pa.nulls(len(table), field.type))
    try:
        new = pa.Table.from_pylist(rows, schema=table.schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise ManifestError(f"the manifest's columns cannot hold the new row ({error})") from None
    as_given = conform(pa.Table.from_pylist(rows, schema=MANIFEST)).table.select(MANIFEST.names)
    if conform(new).table.select(MANIFEST.names).to_pylist() != as_given.to_pylist():
        raise ManifestError("the manifest's columns would drop part of the new row (an older schema: "
                            "append to a new manifest)")
    metadata = table.schema.metadata or MANIFEST.metadata
    return pa.concat_tables([table, new]).replace_schema_metadata(metadata)

