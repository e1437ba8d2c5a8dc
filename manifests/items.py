"""From a manifest row to a validated `EditItem` and its config, with every problem of a
manifest reported as (row, item_id, field, reason)."""

from __future__ import annotations

import io
import json
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa

from dragnext.config import ConfigError, EditConfig, build_config
from dragnext.instruction import (
    EditItem,
    InstructionSpec,
    InvalidItemError,
    build_instruction,
    check_spec,
    open_image_header,
    parse_instruction,
    read_image,
    read_mask,
    validate_item,
)
from manifests.schema import MANIFEST, SCHEMA_VERSION, VERSION_KEY
from manifests.storage import read_bytes
from manifests.uris import UriPolicy

# An id names output paths: `.` and `..` would name the folders above the item's own.
ITEM_ID = re.compile(r"^(?!\.+$)[A-Za-z0-9._-]{1,128}$")
# instruction field names → the manifest's column names, for error messages
_COLUMN_NAMES = {"handle_mask": "handle_mask_uri", "editable_mask": "editable_mask_uri"}


@dataclass(frozen=True)
class Problem:
    row: int
    item_id: str | None
    field: str
    reason: str

    def __str__(self) -> str:
        return f"row {self.row} (item '{self.item_id}'): {self.field}: {self.reason}"


def _column_field(field: str) -> str:
    for name, column in _COLUMN_NAMES.items():
        field = re.sub(rf"\b{name}\b", column, field)
    return field


def _point(p: dict | None) -> list[float] | None:
    return None if p is None else [p["x"], p["y"]]


def instruction_of(row: dict) -> dict:
    """A manifest row in the instruction file's shape (SPEC §2)."""
    return {
        "prompt": row.get("prompt") or "",
        "editable_mask": row.get("editable_mask_uri"),
        "drags": [
            {"type": d["type"], "handle_mask": d["handle_mask_uri"], "handle": _point(d["handle"]),
             "target": _point(d["target"]),
             **({"center": _point(d["center"])} if d.get("center") is not None else {}),
             **({"axis": d["axis"]} if d.get("axis") is not None else {})}
            for d in row.get("drags") or []
        ],
    }


def item_config(row: dict, base: EditConfig) -> EditConfig:
    """The run's config with the row's `params` overrides (a JSON object of keys)."""
    params = row.get("params")
    if not params:
        return base
    item = row["item_id"]
    try:
        overrides = json.loads(params)
    except json.JSONDecodeError as error:
        raise InvalidItemError(item, "params", f"not valid JSON ({error.msg})") from None
    if not isinstance(overrides, dict):
        raise InvalidItemError(item, "params", "must be a JSON object of config keys")
    try:
        return build_config(base.to_record(), overrides)
    except ConfigError as error:
        raise InvalidItemError(item, "params", str(error)) from None


def _in_columns(item: str, check):
    """Run `check`, naming fields as the manifest's columns in its errors."""
    try:
        return check()
    except InvalidItemError as error:
        raise InvalidItemError(item, _column_field(error.field), error.reason) from None


def _file_fields(spec: InstructionSpec, row: dict) -> dict[str, str]:
    fields = {"image_uri": row["image_uri"]}
    if spec.editable_mask is not None:
        fields["editable_mask_uri"] = spec.editable_mask
    for i, drag in enumerate(spec.drags):
        fields[f"drags[{i}].handle_mask_uri"] = drag.handle_mask
    return fields


def check_row(row: dict, base: EditConfig, policy: UriPolicy | None = None) -> InstructionSpec:
    """Every check that needs no file: id, structure, drag geometry, params and (with a
    policy) where each file may come from. Raises `InvalidItemError`."""
    item = row.get("item_id")
    if not item or not ITEM_ID.match(item):
        raise InvalidItemError(str(item), "item_id",
                               "must be 1-128 characters of A-Z a-z 0-9 . _ - and not only dots")
    if not row.get("image_uri"):
        raise InvalidItemError(item, "image_uri", "is empty")
    spec = _in_columns(item, lambda: parse_instruction(instruction_of(row), item))
    _in_columns(item, lambda: check_spec(spec, item))
    item_config(row, base)
    if policy is not None:
        for field, uri in _file_fields(spec, row).items():
            if policy.resolve(uri) is None:
                raise InvalidItemError(item, field, policy.refusal(uri))
    return spec


def _fetch(uri: str, policy: UriPolicy, item: str, field: str) -> io.BytesIO:
    resolved = policy.resolve(uri)
    if resolved is None:
        raise InvalidItemError(item, field, policy.refusal(uri))
    try:
        return io.BytesIO(read_bytes(resolved))
    except FileNotFoundError:
        raise InvalidItemError(item, field, f"'{uri}' does not exist") from None


def check_image(row: dict, spec: InstructionSpec, policy: UriPolicy) -> None:
    """The checks that need only the image's header: it exists, is an image of an accepted
    size, and every point lies inside it."""
    item = row["item_id"]
    image = open_image_header(_fetch(row["image_uri"], policy, item, "image_uri"), item, "image_uri")
    _in_columns(item, lambda: check_spec(spec, item, image.size))


def load_item(row: dict, policy: UriPolicy) -> EditItem:
    """Read the row's image and masks (URIs relative to the manifest) and validate."""
    item = row["item_id"]

    def load() -> EditItem:
        spec = parse_instruction(instruction_of(row), item)
        image = read_image(_fetch(row["image_uri"], policy, item, "image_uri"), item, "image_uri")
        instruction = build_instruction(spec, item, lambda ref, field: read_mask(
            _fetch(ref, policy, item, field), item, field))
        return validate_item(EditItem(image, instruction, item))

    return _in_columns(item, load)


def conform(table: pa.Table) -> tuple[pa.Table, list[str]]:
    """The table cast to the manifest schema, extra columns kept; or the reasons it cannot be."""
    version = (table.schema.metadata or {}).get(VERSION_KEY)
    if version is not None and version.decode() != SCHEMA_VERSION:
        return table, [f"schema version {version.decode()} is not {SCHEMA_VERSION}"]
    missing = [f.name for f in MANIFEST if not f.nullable and f.name not in table.column_names]
    if missing:
        return table, [f"missing column(s): {', '.join(missing)}"]
    columns, problems = {}, []
    for field in MANIFEST:
        if field.name not in table.column_names:
            columns[field.name] = pa.nulls(len(table), field.type)
            continue
        try:
            columns[field.name] = table[field.name].cast(field.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
            problems.append(f"column {field.name}: expected {field.type} ({error})")
    extra = [n for n in table.column_names if n not in MANIFEST.names]
    names = MANIFEST.names + extra
    arrays = [columns[n] if n in columns else table[n] for n in names]
    return pa.Table.from_arrays(arrays, names=names), problems


Depth = Literal["rows", "headers", "files"]


def validate_rows(rows: list[dict[str, Any]], base: EditConfig, policy: UriPolicy,
                  depth: Depth = "headers") -> list[Problem]:
    """Every bad row, not just the first: `rows` checks what needs no file, `headers` also
    reads each image's header (existence, pixel count, points inside), `files` reads and
    checks every image and mask in full."""
    problems = []
    counts = Counter(row.get("item_id") for row in rows)
    for index, row in enumerate(rows):
        item = row.get("item_id")
        try:
            if counts[item] > 1:
                raise InvalidItemError(str(item), "item_id", f"appears {counts[item]} times")
            spec = check_row(row, base, policy)
            if depth == "headers":
                check_image(row, spec, policy)
            elif depth == "files":
                load_item(row, policy)
        except InvalidItemError as error:
            problems.append(Problem(index, item, error.field, error.reason))
    return problems
