"""From a manifest row to a validated `EditItem` and its config, with every problem of a
manifest reported as (row, item_id, field, reason)."""

from __future__ import annotations

import io
import json
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dragnext.architecture import Architecture
from dragnext.config import ConfigError, EditConfig, build_config, output_keys
from dragnext.instruction import (
    EditItem,
    InstructionSpec,
    InvalidItemError,
    build_instruction,
    check_image_shape,
    check_spec,
    open_image_header,
    parse_instruction,
    read_mask,
    read_photo,
    validate_item,
)
from dragnext.photo import upright_size
from manifests.digest import file_identity, input_digest
from manifests.schema import (
    MANIFEST,
    RESERVED_COLUMNS,
    SCHEMA_VERSION,
    VERSION_KEY,
    ManifestError,
    read_table,
)
from manifests.storage import (
    HEADER_BYTES,
    NotARegularFile,
    Once,
    OutputUnwritable,
    StoreUnavailable,
    is_transient,
    read_bytes,
    regular_file_size,
)
from manifests.uris import UriPolicy

# An id names output paths: `.` and `..` would name the folders above the item's own.
# `fullmatch`, never `match` with `$`: `$` also matches before a final newline.
ITEM_ID = re.compile(r"(?!\.+\Z)[A-Za-z0-9._-]{1,128}")
ITEM_ID_RULE = "must be 1-128 characters of A-Z a-z 0-9 . _ - and not only dots"
# A row's config overrides are a handful of keys; anything longer is a mistake or an attack.
MAX_PARAMS_CHARS = 16_384
# Rows whose files are checked at once (each mostly waits on a ranged read).
VALIDATION_THREADS = 16
# A file larger than this is no image or mask this project edits (and would fill a worker).
MAX_FILE_BYTES = 256 * 1024 * 1024
# What a manifest's inline masks may hold in all, decoded. Parquet's dictionary and run
# encodings make a repeated value free on disk, so a small file can stand for gigabytes of
# mask strings: both are counted before anything is decoded.
MAX_MANIFEST_RLE_CHARS = 256_000_000
MAX_MANIFEST_POLYGON_NUMBERS = 32_000_000
# A mask field of the instruction, as an error names it (`drags[2].handle_mask`).
_MASK_FIELD = re.compile(r"(?:drags\[(\d+)\]\.)?(handle_mask|editable_mask)")


@dataclass(frozen=True)
class Problem:
    row: int
    item_id: str | None
    field: str
    reason: str

    def __str__(self) -> str:
        return f"row {self.row} (item '{self.item_id}'): {self.field}: {self.reason}"


def _column_field(field: str, row: dict) -> str:
    """An instruction's field as the manifest names it: a mask given by URI is its `…_uri`
    column (`drags[0].handle_mask` → `drags[0].handle_mask_uri`), an inline one keeps its name."""
    found = _MASK_FIELD.fullmatch(field)
    if found is None:
        return field
    if found[2] == "editable_mask":
        return field + "_uri" if row.get("editable_mask_uri") is not None else field
    drags = row.get("drags") or []
    i = int(found[1])
    by_uri = i < len(drags) and drags[i] is not None and drags[i].get("handle_mask_uri") is not None
    return field + "_uri" if by_uri else field


def _point(p: dict | None) -> list[float] | None:
    return None if p is None else [p["x"], p["y"]]


def _mask_of(item: str, field: str, uri: str | None, inline: dict | None,
             required: bool) -> str | dict | None:
    """The instruction's mask reference from a row's `…_uri` column and its inline column."""
    if uri is not None and inline is not None:
        raise InvalidItemError(item, field, f"give {field}_uri or {field} (inline), not both")
    if uri is None and inline is None and required:
        raise InvalidItemError(item, f"{field}_uri", f"one of {field}_uri and {field} (inline) is required")
    if inline is not None:
        return {k: v for k, v in inline.items() if v is not None}
    return uri


def instruction_of(row: dict) -> dict:
    """A manifest row in the instruction file's shape (SPEC §2)."""
    item = str(row.get("item_id"))
    return {
        "prompt": row.get("prompt") or "",
        "editable_mask": _mask_of(item, "editable_mask", row.get("editable_mask_uri"),
                                  row.get("editable_mask"), required=False),
        "drags": [_drag_of(item, i, d) for i, d in enumerate(row.get("drags") or [])],
    }


def _drag_of(item: str, i: int, d: dict | None) -> dict | None:
    if d is None:  # a null element: reported by the instruction's parser as drags[i]
        return None
    mask = _mask_of(item, f"drags[{i}].handle_mask", d.get("handle_mask_uri"), d.get("handle_mask"),
                    required=True)
    return {"type": d["type"], "handle_mask": mask, "handle": _point(d["handle"]),
            "target": _point(d["target"]),
            **({"center": _point(d["center"])} if d.get("center") is not None else {}),
            **({"axis": d["axis"]} if d.get("axis") is not None else {})}


def with_params(row: dict, overrides: dict | None) -> dict:
    """The row with `overrides` over its own `params` (a retry selection's, `flows.selection`).
    A row whose params are not a JSON object is left as it is: validation reports it."""
    if not overrides:
        return row
    try:
        own = json.loads(row["params"]) if row.get("params") else {}
    except (json.JSONDecodeError, RecursionError):
        return row
    if not isinstance(own, dict):
        return row
    return {**row, "params": json.dumps({**own, **overrides}, sort_keys=True)}


def item_config(row: dict, base: EditConfig) -> EditConfig:
    """The run's config with the row's `params` overrides (a JSON object of keys)."""
    params = row.get("params")
    if not params:
        return base
    item = row["item_id"]
    if len(params) > MAX_PARAMS_CHARS:
        raise InvalidItemError(item, "params", f"is {len(params):,} characters; at most {MAX_PARAMS_CHARS:,}")
    try:
        overrides = json.loads(params)
    except json.JSONDecodeError as error:
        raise InvalidItemError(item, "params", f"not valid JSON ({error.msg})") from None
    except RecursionError:
        raise InvalidItemError(item, "params", "is nested too deeply") from None
    if not isinstance(overrides, dict):
        raise InvalidItemError(item, "params", "must be a JSON object of config keys")
    try:
        return build_config(base.to_record(), overrides)
    except ConfigError as error:
        raise InvalidItemError(item, "params", str(error)) from None


def _in_columns(row: dict, check):
    """Run `check`, naming fields as the manifest's columns in its errors."""
    try:
        return check()
    except InvalidItemError as error:
        field = _column_field(error.field, row)
        raise InvalidItemError(str(row.get("item_id")), field, error.reason) from None


def _file_fields(spec: InstructionSpec, row: dict) -> dict[str, str]:
    """The row's files by column: the image and every mask given by URI (not inline)."""
    files = {f"{field}_uri": ref for field, ref in spec.masks().items() if isinstance(ref, str)}
    return {"image_uri": row["image_uri"], **files}


def item_input_digest(row: dict, config: dict, model_fingerprint: str, policy: UriPolicy,
                      once: Once | None = None) -> str:
    """The digest of everything a valid row's edit is made from (`manifests.digest`); with
    `once`, each file's identity is asked for once however many rows name it."""
    spec = parse_instruction(instruction_of(row), row["item_id"])
    files = [policy.resolve(uri) for uri in _file_fields(spec, row).values()]
    inputs = {"image_uri": row["image_uri"], **instruction_of(row)}
    output_config = output_keys(config)  # how it runs and how it is judged are not inputs
    once = once or Once()
    identities = [once(file_identity, uri, once.info) for uri in files]
    return input_digest(inputs, identities, output_config, model_fingerprint)


def check_row(row: dict, base: EditConfig, policy: UriPolicy | None = None,
              architecture: Architecture | None = None) -> InstructionSpec:
    """Every check that needs no file: id, structure, drag geometry, params (against the
    model's architecture when known) and (with a policy) where each file may come from.
    Raises `InvalidItemError`."""
    item = row.get("item_id")
    if not isinstance(item, str) or not ITEM_ID.fullmatch(item):
        raise InvalidItemError(str(item), "item_id", ITEM_ID_RULE)
    if not row.get("image_uri"):
        raise InvalidItemError(item, "image_uri", "is empty")
    spec = _in_columns(row, lambda: parse_instruction(instruction_of(row), item))
    _in_columns(row, lambda: check_spec(spec, item))
    config = item_config(row, base)
    if architecture is not None:
        try:
            config.check_model(architecture)
        except ConfigError as error:
            raise InvalidItemError(item, "params" if row.get("params") else "config", str(error)) from None
    if policy is not None:
        for field, uri in _file_fields(spec, row).items():
            if policy.resolve(uri) is None:
                raise InvalidItemError(item, field, policy.refusal(uri))
    return spec


def _look(uri: str, policy: UriPolicy, item: str, field: str, once: Once) -> str:
    """The URI to read, after the policy and a look at what it names (stat, or a HEAD):
    refused unless it is a regular file or an object of bounded size (a FIFO would block
    the reader, a device would never end)."""
    resolved = policy.resolve(uri)
    if resolved is None:
        raise InvalidItemError(item, field, policy.refusal(uri))
    try:
        size = once(regular_file_size, resolved, once.info)
    except FileNotFoundError:
        raise InvalidItemError(item, field, f"'{uri}' does not exist") from None
    except NotARegularFile as error:
        raise InvalidItemError(item, field, f"'{uri}' {error}") from None
    if size > MAX_FILE_BYTES:
        raise InvalidItemError(item, field, f"'{uri}' is {size:,} bytes; at most {MAX_FILE_BYTES:,} are read")
    return resolved


def _fetch(uri: str, policy: UriPolicy, item: str, field: str, once: Once,
           header_only: bool = False) -> io.BytesIO:
    """A file's bytes (the first `HEADER_BYTES` with `header_only`), once `_look` allows it."""
    resolved = _look(uri, policy, item, field, once)
    try:
        return io.BytesIO(once(read_bytes, resolved, HEADER_BYTES if header_only else None))
    except FileNotFoundError:
        raise InvalidItemError(item, field, f"'{uri}' does not exist") from None
    except IsADirectoryError:
        raise InvalidItemError(item, field, f"'{uri}' is a directory, not a file") from None


def check_image(row: dict, spec: InstructionSpec, policy: UriPolicy, once: Once) -> None:
    """The checks that need only the image's header (a ranged read, one per distinct image
    through `once`): it exists, is an image of an accepted size, and every point lies inside it."""
    item = row["item_id"]
    try:
        image = open_image_header(_fetch(row["image_uri"], policy, item, "image_uri", once, header_only=True),
                                  item, "image_uri")
    except InvalidItemError as error:
        if "not a readable image" not in error.reason:
            raise
        # a header past the first bytes (a JPEG with a large EXIF block): read it all
        whole = _fetch(row["image_uri"], policy, item, "image_uri", once)
        image = open_image_header(whole, item, "image_uri")
    size = upright_size(image)  # the instruction's coordinates are on the upright picture
    check_image_shape(size, item, "image_uri")
    _in_columns(row, lambda: check_spec(spec, item, size))
    for field, uri in _file_fields(spec, row).items():  # masks: a look, not a read
        if field != "image_uri":
            _look(uri, policy, item, field, once)


def load_item(row: dict, policy: UriPolicy) -> EditItem:
    """Read the row's image and masks (URIs relative to the manifest) and validate."""
    item = row["item_id"]

    def load() -> EditItem:
        spec = parse_instruction(instruction_of(row), item)
        once = Once()  # a worker reads each file fresh
        photo = read_photo(_fetch(row["image_uri"], policy, item, "image_uri", once), item, "image_uri")
        instruction = build_instruction(spec, item, lambda ref, field: read_mask(
            _fetch(ref, policy, item, field, once), item, field), photo.size)
        return validate_item(EditItem(photo.image, instruction, item, photo=photo))

    return _in_columns(row, lambda: isolated(item, load))


def isolated(item: str, check):
    """`check()`, with any unexpected error turned into this row's `InvalidItemError`: one
    row's odd input (or a bug it finds) must never take its batch down."""
    try:
        return check()
    except InvalidItemError:
        raise
    except (StoreUnavailable, OutputUnwritable):
        raise
    except Exception as error:
        if is_transient(error):
            raise
        raise InvalidItemError(str(item), "row", f"could not be checked ({type(error).__name__}: "
                               f"{str(error)[:200]})") from None


def _as_text(column: pa.ChunkedArray, expected: pa.DataType) -> pa.ChunkedArray:
    """Binary bytes where text is expected, read as text (checked for UTF-8 afterwards)."""
    binary = pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type)
    if pa.types.is_string(expected) and binary:
        text = pa.string() if pa.types.is_binary(column.type) else pa.large_string()
        return pa.chunked_array([chunk.view(text) for chunk in column.chunks], type=text)
    return column


def _utf8_rows(name: str, column: pa.ChunkedArray) -> tuple[pa.ChunkedArray, dict[int, tuple[str, str]]]:
    """The column with every value that is not valid UTF-8 set to null, and those rows'
    problems: one row's bytes must not make the whole manifest unreadable."""
    try:
        column.validate(full=True)
        return column, {}
    except pa.ArrowInvalid:
        pass
    bad = {}
    for index in range(len(column)):
        try:
            column.slice(index, 1).validate(full=True)
        except pa.ArrowInvalid:
            bad[index] = (name, "is not valid UTF-8 text")
    null = pa.nulls(len(column), column.type)
    keep = pa.array([i not in bad for i in range(len(column))])
    return pa.chunked_array([pc.if_else(keep, column.combine_chunks(), null)]), bad


@dataclass(frozen=True)
class Conformed:
    """A manifest table cast to the schema (extra columns kept); `problems` make the whole
    table unusable, `row_problems` (row → field, reason) only their rows."""
    table: pa.Table
    problems: list[str]
    row_problems: dict[int, tuple[str, str]]


def conform(table: pa.Table) -> Conformed:
    """The table cast to the manifest schema, extra columns kept; or the reasons it cannot be."""
    version = (table.schema.metadata or {}).get(VERSION_KEY)
    if version is not None and version.decode() != SCHEMA_VERSION:
        return Conformed(table, [f"schema version {version.decode()} is not {SCHEMA_VERSION}"], {})
    missing = [f.name for f in MANIFEST if not f.nullable and f.name not in table.column_names]
    if missing:
        return Conformed(table, [f"missing column(s): {', '.join(missing)}"], {})
    reserved = [n for n in table.column_names if n in RESERVED_COLUMNS]
    if reserved:
        return Conformed(table, [f"column(s) {', '.join(reserved)} would collide with the results columns "
                                 "of the same name: rename or drop them (a results.parquet is not a "
                                 "manifest)"], {})
    columns, problems, row_problems = {}, [], {}
    for name in table.column_names:
        expected = MANIFEST.field(name).type if name in MANIFEST.names else table[name].type
        columns[name], bad = _utf8_rows(name, _as_text(table[name], expected))
        for row, problem in bad.items():
            row_problems.setdefault(row, problem)
    for field in MANIFEST:
        if field.name not in table.column_names:
            columns[field.name] = pa.nulls(len(table), field.type)
            continue
        try:
            columns[field.name] = columns[field.name].cast(field.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
            problems.append(f"column {field.name}: expected {field.type} ({error})")
    names = MANIFEST.names + [n for n in table.column_names if n not in MANIFEST.names]
    return Conformed(pa.Table.from_arrays([columns[n] for n in names], names=names), problems, row_problems)


def _mask_columns(uri: str, metadata: pq.FileMetaData) -> list[str]:
    """The inline masks' RLE string columns (to be read dictionary-encoded), once their
    polygon coordinates, counted from the file's metadata, are within the budget. Matched
    by the paths' parts, not spelled out: older writers name a list's items `item`, not
    `element`."""
    paths = [metadata.schema.column(c).path for c in range(metadata.num_columns)]
    masks = [p for p in paths if p.split(".")[0] in ("editable_mask", "drags")]
    polygons = {p for p in masks if ".polygons." in p}
    numbers = sum(metadata.row_group(g).column(c).num_values
                  for g in range(metadata.num_row_groups) for c in range(metadata.num_columns)
                  if metadata.row_group(g).column(c).path_in_schema in polygons)
    if numbers > MAX_MANIFEST_POLYGON_NUMBERS:
        raise ManifestError(f"{uri}: inline polygons hold {numbers:,} coordinates in all; at most "
                            f"{MAX_MANIFEST_POLYGON_NUMBERS:,} per manifest (give large masks as files)")
    return [p for p in masks if p.endswith(".rle.counts")]


def _field(array: pa.Array | None, name: str) -> pa.Array | None:
    """A struct array's child, or None where the array has no such field (an older manifest)."""
    if array is None or not pa.types.is_struct(array.type) or array.type.get_field_index(name) < 0:
        return None
    return array.field(name)


def _rle_chars(table: pa.Table) -> int:
    """The characters of every inline RLE string, counted on their dictionaries (not decoded)."""
    total = 0
    for name in ("editable_mask", "drags"):
        if name not in table.column_names:
            continue
        column = table[name].combine_chunks()
        if name == "drags":
            if not pa.types.is_list(column.type):
                continue
            column = _field(column.flatten(), "handle_mask")
        counts = _field(_field(column, "rle"), "counts")
        if counts is None:
            continue
        if pa.types.is_dictionary(counts.type):
            counts = pc.binary_length(counts.dictionary).take(counts.indices)
        elif pa.types.is_string(counts.type) or pa.types.is_binary(counts.type):
            counts = pc.binary_length(counts)
        else:
            continue  # conform reports the column's type
        total += pc.sum(counts).as_py() or 0
    return total


def read_manifest(uri: str) -> Conformed:
    """The manifest at `uri`, conformed, refused whole (`ManifestError`) when its inline
    masks exceed the per-manifest budget."""
    table = read_table(uri, check=lambda metadata: _mask_columns(uri, metadata))
    chars = _rle_chars(table)
    if chars > MAX_MANIFEST_RLE_CHARS:
        raise ManifestError(f"{uri}: inline RLE masks hold {chars:,} characters in all; at most "
                            f"{MAX_MANIFEST_RLE_CHARS:,} per manifest (give large masks as files)")
    return conform(table)


Depth = Literal["rows", "headers", "files"]


def validate_rows(rows: list[dict[str, Any]], base: EditConfig, policy: UriPolicy,
                  depth: Depth = "headers", row_problems: dict[int, tuple[str, str]] | None = None,
                  architecture: Architecture | None = None, once: Once | None = None) -> list[Problem]:
    """Every bad row, not just the first: `rows` checks what needs no file, `headers` also
    reads each image's header (existence, pixel count, points inside), `files` reads and
    checks every image and mask in full. `row_problems` are those `conform` found. Each
    distinct file is looked at once (`once`, shared with the plan's digests)."""
    counts = Counter(row.get("item_id") for row in rows)
    once = once or Once()

    def check(index: int) -> Problem | None:
        row = rows[index]
        item = row.get("item_id")
        try:
            if index in (row_problems or {}):
                raise InvalidItemError(str(item), *row_problems[index])
            if counts[item] > 1:
                raise InvalidItemError(str(item), "item_id", f"appears {counts[item]} times")
            spec = isolated(item, lambda: check_row(row, base, policy, architecture))
            if depth == "headers":
                isolated(item, lambda: check_image(row, spec, policy, once))
            elif depth == "files":
                load_item(row, policy)
        except InvalidItemError as error:
            return Problem(index, item, error.field, error.reason)
        return None

    # Reading headers is waiting on the store, not computing: overlap the requests.
    with ThreadPoolExecutor(max_workers=VALIDATION_THREADS if depth != "rows" else 1) as pool:
        return [p for p in pool.map(check, range(len(rows))) if p is not None]
