"""The manifest and results schemas (SPEC §5) as pyarrow schemas, with their versions.

Documented column by column in `manifests/README.md`.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from manifests.storage import read_bytes, write_bytes

SCHEMA_VERSION = "1"
VERSION_KEY = b"dragnext.schema_version"

POINT = pa.struct([pa.field("x", pa.float64(), nullable=False),
                   pa.field("y", pa.float64(), nullable=False)])
# A mask given inline (`dragnext.inline_mask`): COCO polygons or compressed COCO RLE.
MASK = pa.struct([
    pa.field("polygons", pa.list_(pa.list_(pa.float64()))),  # [[x1, y1, x2, y2, ...], ...]
    pa.field("rle", pa.struct([pa.field("size", pa.list_(pa.int64())),  # [height, width]
                               pa.field("counts", pa.string())])),
])
DRAG = pa.struct([
    pa.field("type", pa.string(), nullable=False),
    pa.field("handle_mask_uri", pa.string()),  # this, or handle_mask inline
    pa.field("handle_mask", MASK),
    pa.field("handle", POINT, nullable=False),
    pa.field("target", POINT, nullable=False),
    pa.field("center", POINT),
    pa.field("axis", pa.string()),  # scale only: uniform (default) or free
])
MANIFEST = pa.schema([
    pa.field("item_id", pa.string(), nullable=False),
    pa.field("image_uri", pa.string(), nullable=False),
    pa.field("prompt", pa.string()),
    pa.field("editable_mask_uri", pa.string()),
    pa.field("editable_mask", MASK),  # or inline (at most one of the two)
    pa.field("drags", pa.list_(DRAG), nullable=False),
    pa.field("params", pa.string()),  # a JSON object of config overrides for this item
], metadata={VERSION_KEY: SCHEMA_VERSION.encode()})

STATUSES = ("succeeded", "failed", "invalid", "skipped")
RESULTS = pa.schema([
    pa.field("item_id", pa.string(), nullable=False),
    pa.field("status", pa.string(), nullable=False),
    pa.field("error", pa.string()),
    pa.field("image_uri", pa.string()),
    pa.field("image_format", pa.string()),  # `output.format` of the edited file: png, jpeg, webp, avif
    pa.field("preview_uri", pa.string()),
    pa.field("record_uri", pa.string()),
    pa.field("metrics", pa.map_(pa.string(), pa.float64())),
    pa.field("timings_s", pa.map_(pa.string(), pa.float64())),
    pa.field("attempts", pa.int32(), nullable=False),
    pa.field("config_hash", pa.string()),
    pa.field("device", pa.string()),
    # digest of everything the edit was made from (files' bytes, drags, prompt, config, model):
    # a rerun keeps a succeeded item only while it still matches
    pa.field("input_digest", pa.string()),
    # a succeeded item whose own metrics say a person should look at it (`dragnext.review`);
    # null for items that did not succeed
    pa.field("needs_review", pa.bool_()),
    pa.field("review_reasons", pa.string()),
], metadata={VERSION_KEY: SCHEMA_VERSION.encode()})
# Columns the project writes next to the manifest's: a manifest column of the same name would
# collide with them in results.parquet.
RESERVED_COLUMNS = tuple(n for n in RESULTS.names if n not in MANIFEST.names) + ("run_id",)


def table_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def write_table(table: pa.Table, uri: str) -> None:
    write_bytes(uri, table_bytes(table))


class ManifestError(ValueError):
    """A file that cannot be read as a manifest (or results) table at all."""


def read_table(uri: str, check: Callable[[pq.FileMetaData], list[str]] | None = None) -> pa.Table:
    """The table at `uri`. `check(metadata)` may refuse it (raising `ManifestError`) before
    any column is decoded, and names the columns to keep dictionary-encoded."""
    # Always through fsspec: pyarrow's own S3 client would ignore the configured endpoint.
    data = read_bytes(uri)
    try:
        keep = check(pq.read_metadata(io.BytesIO(data))) if check is not None else None
        return pq.read_table(io.BytesIO(data), read_dictionary=keep or None)
    except (pa.ArrowInvalid, OSError) as error:
        raise ManifestError(f"{uri}: not a Parquet file ({error})") from None


def write_manifest(rows: list[dict], uri: str) -> None:
    write_table(pa.Table.from_pylist(rows, schema=MANIFEST), uri)
