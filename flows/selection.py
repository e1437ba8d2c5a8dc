"""A retry selection: items a person picked (the studio's Review page writes one) to edit
again, with config overrides for them alone. `retry-failed` runs exactly these items; the
overrides go over each item's own `params`, so the rest of the run and its summary keep
the run's config (`manifests.items.with_params`)."""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dragnext.architecture import Architecture
from dragnext.config import ConfigError, EditConfig
from dragnext.instruction import InvalidItemError
from manifests.items import item_config, with_params
from manifests.storage import absolute, read_bytes

MAX_SELECTED = 1_000_000
# A million ids of 128 characters and their overrides, with room to spare.
MAX_SELECTION_BYTES = 256 * 1024 * 1024


class SelectionError(ValueError):
    """A selection file that cannot be used; names the file and the field."""


class Selection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    results_uri: str
    items: list[str] = Field(min_length=1, max_length=MAX_SELECTED)
    overrides: dict = Field(default_factory=dict)
    created: str = ""


def read_selection(uri: str, results_uri: str) -> Selection:
    """The selection at `uri`, which must be one of `results_uri`'s run."""
    try:
        data = read_bytes(uri)
        if len(data) > MAX_SELECTION_BYTES:
            raise SelectionError(f"selection {uri} is {len(data):,} bytes; at most {MAX_SELECTION_BYTES:,}")
        selection = Selection.model_validate(json.loads(data))
    except FileNotFoundError:
        raise SelectionError(f"selection {uri} does not exist") from None
    except RecursionError:
        raise SelectionError(f"selection {uri} is nested too deeply to be a selection") from None
    except ValueError as error:  # JSON and pydantic's errors
        if isinstance(error, ValidationError):
            first = error.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "<root>"
            raise SelectionError(f"selection {uri}: {where}: {first['msg']}") from None
        raise SelectionError(f"selection {uri} is not JSON ({error})") from None
    if absolute(selection.results_uri) != absolute(results_uri):
        raise SelectionError(f"selection {uri}: results_uri: it selects items of {selection.results_uri}, "
                             f"not of {results_uri}")
    return selection



def check_selection(selection: Selection, uri: str, run_items: list[str], manifest_rows: list[dict],
                    base: EditConfig, architecture: Architecture | None) -> None:
    """Before anything runs: every selected item is one of the run's, and the overrides make
    a valid config for each of them (over its own params, against the model's shape).
    Raises `SelectionError` naming the first item and key that fail."""
    known = set(run_items)
    unknown = [i for i in selection.items if i not in known]
    if len(unknown) == len(selection.items):
        raise SelectionError(f"selection {uri}: items: names none of the run's {len(known):,} items "
                             f"(e.g. '{unknown[0]}')")
    if unknown:
        raise SelectionError(f"selection {uri}: items: {len(unknown):,} of them are not items of the run "
                             f"(e.g. '{unknown[0]}')")
    if not selection.overrides:
        return
    rows = {row["item_id"]: row for row in manifest_rows}
    for item_id in dict.fromkeys(selection.items):
        row = rows.get(item_id)
        if row is None:
            raise SelectionError(f"selection {uri}: items: '{item_id}' is no longer in the run's manifest")
        try:
            item_config(row, base)
        except InvalidItemError:
            continue  # its own params are wrong: the plan reports the row, as in any run
        try:
            config = item_config(with_params(row, selection.overrides), base)
            if architecture is not None:
                config.check_model(architecture)
        except (InvalidItemError, ConfigError) as error:
            reason = error.reason if isinstance(error, InvalidItemError) else str(error)
            raise SelectionError(f"selection {uri}: overrides: for item '{item_id}': {reason}") from None
